"""mmptq: post-training quantization for OpenMMLab 2.x.

``import mmptq`` registers every observer, quantizer, transform,
reconstruction, loop and runner in mmptq's registries.

Only mmptq's own command lines (``tools/*.py``, ``python -m mmptq.tools.*``
and the ``mmptq-*`` scripts) defer that: they parse their arguments first
(``--help`` without importing torch), then call :func:`import_all`.
"""
import os as _os
import sys as _sys

from .version import __version__

#: set (to 1) by ``tools/*.py`` before they import mmptq; read once
DEFER_ENV = 'MMPTQ_DEFER_IMPORTS'


def _deferred() -> bool:
    """Whether this import is the start-up of one of mmptq's command
    lines: ``tools/*.py`` set ``DEFER_ENV`` (removed here, so no child
    process inherits it); ``python -m mmptq.tools.x`` imports this package
    while ``sys.argv[0]`` is still ``'-m'``; a console script is named
    ``mmptq-<tool>``."""
    if _os.environ.pop(DEFER_ENV, '') == '1':
        return True
    argv0 = _sys.argv[0] if _sys.argv else ''
    name = _os.path.basename(argv0)
    return argv0 == '-m' or (name.startswith('mmptq-') and '.' not in name)


def import_all() -> None:
    """Import and register everything (what ``import mmptq`` does outside
    the command lines); idempotent."""
    global quantize_model
    from .utils import install_quiet_progress, install_torchvision_shim

    # mmpretrain imports torchvision; a no-op where a real one is installed
    install_torchvision_shim()
    # progress bars only on a terminal, plain lines in a log file
    install_quiet_progress()

    from . import (apis, engine, nn, observers, quantizers,  # noqa: F401
                   reconstruction, transforms)
    from .apis import quantize_model


if not _deferred():
    import_all()
else:

    def __getattr__(name: str) -> object:
        """``mmptq.quantize_model`` in a deferred import (submodules are
        found by the import system: ``from . import apis`` asks here
        first)."""
        if name == 'quantize_model':
            import_all()
            return globals()[name]
        raise AttributeError(
            f'module {__name__!r} has no attribute {name!r}')


__all__ = ['quantize_model', 'import_all', '__version__']
