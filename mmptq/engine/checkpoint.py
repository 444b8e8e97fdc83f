"""Safe loading of OpenMMLab checkpoints with ``weights_only=True``.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which
rejects real OpenMMLab checkpoints: their ``meta`` and ``message_hub``
entries hold numpy arrays, scalars and dtypes and mmengine objects
(``ConfigDict``, ``HistoryBuffer``). The usual "fix", ``weights_only=False``,
lets a checkpoint run arbitrary code. :func:`load_checkpoint_file` keeps
``weights_only=True`` and allow-lists exactly the globals that such
checkpoints need and that only rebuild data; anything else is refused with
an error that names the global and the opt-in (``--unsafe-load`` in the
mmptq tools, ``unsafe=True`` here).

Also: loading a checkpoint into a model with the keys checked
(:func:`load_state_checked`, :func:`load_quantized_checkpoint`), saving a
quantized one (:func:`save_quantized_checkpoint`) and publishing trained
weights (:func:`publish_checkpoint`).
"""
import argparse
import os
import os.path as osp
import pickle
import re
import warnings
import zipfile
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from mmptq.core import (META_KEY, PACKAGE_DATA, QuantSummary, quant_meta,
                        restore_quantized)
from mmptq.utils import atomic_path, file_digest
from mmptq.version import __version__

SafeGlobal = Tuple[Any, str]

# Statistics methods a pickled ``HistoryBuffer`` refers to. torch.save uses
# pickle protocol 2, which writes ``HistoryBuffer.min`` as
# ``getattr(HistoryBuffer, 'min')``; only these lookups are let through.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a global outside mmptq's allow-list."""


class UnsafeLoadWarning(UserWarning):
    """A checkpoint is being loaded with ``weights_only=False``."""


def _history_buffer_getattr(obj: Any, name: str, *default: Any) -> Any:
    """``builtins.getattr`` as seen by the unpickler: HistoryBuffer only."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS and \
            not default:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'GLOBAL builtins.getattr is only allowed for HistoryBuffer '
        f'statistics methods {_HISTORY_BUFFER_METHODS}, got '
        f'getattr({obj!r}, {name!r})')


def _numpy_globals() -> List[SafeGlobal]:
    import numpy as np
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    out: List[SafeGlobal] = []
    # Checkpoints written under numpy 1.x name ``numpy.core``; under numpy 2
    # ``numpy._core``. Both names map to the running numpy's functions.
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        out.append((multiarray._reconstruct, f'{mod}._reconstruct'))
        out.append((multiarray.scalar, f'{mod}.scalar'))
    out.append((np.ndarray, 'numpy.ndarray'))
    out.append((np.dtype, 'numpy.dtype'))
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    for name in sorted(dir(dtypes) if dtypes is not None else []):
        cls = getattr(dtypes, name)
        if name.endswith('DType') and isinstance(cls, type):
            out.append((cls, f'numpy.dtypes.{name}'))
    for sc in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
               np.uint16, np.uint32, np.uint64, np.float16, np.float32,
               np.float64, np.complex64, np.complex128):
        out.append((sc, f'numpy.{sc.__name__}'))
    return out


def _mmengine_globals() -> List[SafeGlobal]:
    from mmengine.config import Config, ConfigDict
    from mmengine.logging import HistoryBuffer
    return [
        (ConfigDict, 'mmengine.config.config.ConfigDict'),
        (Config, 'mmengine.config.config.Config'),
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_getattr, 'builtins.getattr'),
    ]


def safe_globals_list() -> List[SafeGlobal]:
    """The ``(object, 'module.name')`` pairs allow-listed for a safe load.

    Beyond torch's own defaults (tensors, ``OrderedDict``, ``Counter``,
    ``set``...): numpy arrays, scalars and dtypes (numpy 1.x and 2.x names),
    mmengine's ``ConfigDict``, ``Config`` and ``HistoryBuffer`` (with the
    ``getattr`` lookups of its statistics methods only), ``frozenset``,
    ``slice``, ``range`` and ``argparse.Namespace`` (research checkpoints
    store their ``args``). Each one only rebuilds data.
    """
    return _numpy_globals() + _mmengine_globals() + [
        (frozenset, 'builtins.frozenset'),
        (slice, 'builtins.slice'),
        (range, 'builtins.range'),
        (argparse.Namespace, 'argparse.Namespace'),
    ]


def _rejected_globals(filename: str, exc: Exception) -> List[str]:
    """Names of the globals that made a safe load fail, best effort."""
    names: List[str] = []
    try:
        with torch.serialization.safe_globals(safe_globals_list()):
            names = sorted(
                torch.serialization.get_unsafe_globals_in_checkpoint(
                    filename))
    except Exception:  # legacy (non-zip) files, torchscript...
        pass
    for name in re.findall(r'GLOBAL ([\w.]+)', str(exc)):
        if name not in names:
            names.append(name)
    return names


class NotACheckpointError(ValueError):
    """The file is neither a zip archive nor a pickle that torch reads."""


def _check_is_checkpoint(filename: str) -> None:
    """Raise :class:`NotACheckpointError` when ``filename`` is neither a
    zip archive (``torch.save``'s format) nor a pickle (its legacy format,
    which starts with the PROTO opcode)."""
    with open(filename, 'rb') as f:
        head = f.read(64)
    if zipfile.is_zipfile(filename) or head[:1] == b'\x80':
        return
    if not head:
        what = 'it is empty'
    elif head.startswith(b'PK\x03\x04'):
        what = 'it is a truncated or damaged zip archive (an interrupted ' \
               'download or save?)'
    elif head.lstrip().lower().startswith((b'<!doctype html', b'<html')):
        what = 'it is an HTML page (a login or error page saved instead ' \
               'of the file?)'
    elif head.lstrip()[:1] == b'<':
        what = 'it is an HTML / XML text (an error page saved instead ' \
               'of the file?)'
    else:
        what = f'it starts with {head[:16]!r}'
    raise NotACheckpointError(
        f'{filename} is not a checkpoint: torch reads a zip archive or a '
        f'pickle, and {what}. Download it again')


def load_checkpoint_file(filename: str,
                         map_location: Union[str, torch.device, Callable,
                                             Dict, None] = 'cpu',
                         unsafe: bool = False) -> Any:
    """Load a checkpoint file written by ``torch.save`` / mmengine.

    Args:
        filename: local path of the checkpoint.
        map_location: as in :func:`torch.load`.
        unsafe: load with ``weights_only=False`` (runs any code the file
            holds; only for files you trust). Emits an
            :class:`UnsafeLoadWarning`.

    Raises:
        NotACheckpointError: the file is not one torch can read (an HTML
            page, an empty file...).
        UnsafeCheckpointError: the file needs a global outside
            :func:`safe_globals_list`; the message names it.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if unsafe:
        warnings.warn(
            f'Loading {filename} with torch.load(weights_only=False): the '
            'file can execute arbitrary code. Do this only for checkpoints '
            'you trust.',
            UnsafeLoadWarning,
            stacklevel=2)
        try:
            return torch.load(
                filename, map_location=map_location, weights_only=False)
        except (pickle.UnpicklingError, EOFError, RuntimeError):
            _check_is_checkpoint(filename)
            raise
    try:
        with torch.serialization.safe_globals(safe_globals_list()):
            return torch.load(
                filename, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError):
        _check_is_checkpoint(filename)
        raise
    except pickle.UnpicklingError as exc:
        _check_is_checkpoint(filename)
        names = _rejected_globals(filename, exc)
        what = ', '.join(names) if names else 'an unknown object'
        detail = str(exc).split('WeightsUnpickler error:')[-1].strip()
        detail = detail.split('\n')[0].split(' Please use')[0]
        raise UnsafeCheckpointError(
            f'Refused to load {filename}: it needs {what}, outside '
            "mmptq's allow-list of safe globals; unpickling that could run "
            'arbitrary code. If you trust this file, pass --unsafe-load to '
            'the mmptq tool (or unsafe=True to load_checkpoint_file / '
            f'install_safe_loader). torch: {detail}') from exc


def install_safe_loader(unsafe: bool = False) -> Optional[Callable]:
    """Make mmengine load local checkpoint files with
    :func:`load_checkpoint_file`.

    Registers it for local paths (prefix ``''``) in mmengine's
    ``CheckpointLoader``, which ``mmengine.runner.load_checkpoint``,
    ``Runner.load_checkpoint`` and ``Runner.resume`` go through. Calling it
    again replaces the previous registration.

    Args:
        unsafe: load with ``weights_only=False`` (see
            :func:`load_checkpoint_file`).

    Returns:
        The loader that was registered for local files before, so a caller
        can restore it with ``CheckpointLoader.register_scheme('', old,
        force=True)``.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    if unsafe:

        def load_from_local_unsafe(filename: str,
                                   map_location: Any = None) -> Any:
            return load_checkpoint_file(filename, map_location, unsafe=True)

        loader: Callable = load_from_local_unsafe
    else:

        def load_from_local_safe(filename: str,
                                 map_location: Any = None) -> Any:
            return load_checkpoint_file(filename, map_location)

        loader = load_from_local_safe
    previous = CheckpointLoader._schemes.get('')
    CheckpointLoader.register_scheme(prefixes='', loader=loader, force=True)
    return previous


def publish_checkpoint(src: str, dst: str,
                       dtype: Optional[torch.dtype] = None,
                       exclude: Tuple[str, ...] = (),
                       meta_keys: Tuple[str, ...] = (
                           'mmengine_version', 'dataset_meta', 'epoch',
                           'iter', 'seed', 'experiment_name', 'cfg')
                       ) -> str:
    """Write ``src``'s weights without optimizer, scheduler and message-hub
    state to ``dst`` (the upstream ``publish_model`` step); returns dst's
    sha256. Only ``meta_keys`` of its ``meta`` are kept; with ``dtype``
    (e.g. ``torch.float16``) floating-point tensors are stored in it
    (loading casts them back to the model's dtype); keys starting with an
    ``exclude`` prefix are left out (a frozen pretrained part that the
    model reads from elsewhere, e.g. the demo LAVT's ``text_encoder.``)."""
    ckpt = load_checkpoint_file(src)
    if 'state_dict' not in ckpt:
        raise KeyError(f'{src} has no "state_dict": not a Runner checkpoint')
    meta = {k: v for k, v in ckpt.get('meta', {}).items() if k in meta_keys}
    state = ckpt['state_dict']
    if exclude:
        state = type(state)((k, v) for k, v in state.items()
                            if not k.startswith(tuple(exclude)))
        meta['excluded'] = list(exclude)
    if dtype is not None:
        state = type(state)((k, v.to(dtype) if v.is_floating_point() else v)
                            for k, v in state.items())
        meta['stored_dtype'] = str(dtype)
    out = dict(state_dict=state, meta=meta)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(out, dst)
    return file_digest(dst)['sha256']


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP-style wrapper (or the model itself)."""
    return model.module if is_model_wrapper(model) else model


def _shape(t: Any) -> Optional[Tuple[int, ...]]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def compare_state(model_state: Dict, state: Dict
                  ) -> Tuple[List[str], List[str], List[str]]:
    """Keys of ``model_state`` missing from ``state``, keys of ``state`` the
    model does not have, and ``'key: checkpoint (shape), model (shape)'`` for
    the common tensors whose shapes differ."""
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    shapes = [f'{k}: checkpoint {_shape(state[k])}, model '
              f'{_shape(model_state[k])}' for k in model_state
              if k in state and _shape(state[k]) != _shape(model_state[k])]
    return missing, unexpected, shapes


def fitting_demo_configs(state: Dict) -> List[str]:
    """The shipped demo configs (``configs/demo/<name>.py``) whose demo
    checkpoint has exactly the keys and shapes of ``state``."""
    names = {k: _shape(v) for k, v in state.items()}
    out = []
    for ckpt in sorted((PACKAGE_DATA / 'checkpoints' / 'demo').glob('*.pth')):
        cfg = PACKAGE_DATA / 'configs' / 'demo' / f'{ckpt.stem}.py'
        if not cfg.is_file():
            continue
        try:
            other = load_checkpoint_file(str(ckpt)).get('state_dict', {})
        except Exception:  # noqa: BLE001 - a hint only
            continue
        if {k: _shape(v) for k, v in other.items()} == names:
            out.append(f'configs/demo/{cfg.name}')
    return out


def _n(items: List, noun: str) -> str:
    return f'{len(items)} {noun}' + ('' if len(items) == 1 else 's')


def _mismatch_error(kind: str, path: str, state: Dict, missing: List[str],
                    unexpected: List[str], shapes: List[str],
                    quantized: bool) -> ValueError:
    fits = fitting_demo_configs(state) if not quantized else []
    return ValueError(
        f'{kind} {path} does not match the model of this config: '
        f'{_n(missing, "missing key")} {missing[:3]}, '
        f'{_n(unexpected, "unexpected key")} {unexpected[:3]}, '
        f'{_n(shapes, "tensor")} of another shape {shapes[:3]}. '
        + (f'It fits the demo config {" / ".join(fits)}. ' if fits else '')
        + 'Check that config and checkpoint belong together (architecture, '
        'num_classes, channels, ...)'
        + (' and that the quantized checkpoint was made from this config'
           if quantized else ''))


def load_state_checked(model: nn.Module, state: Dict, path: str,
                       quantized: bool = False) -> None:
    """Load ``state`` (from checkpoint ``path``) into ``model``; missing
    keys or shape mismatches are errors that name the checkpoint, keys the
    model does not use are a warning (an error for quantized checkpoints).
    A ``module.`` prefix (DDP) is dropped.

    Keys and shapes are compared first: a checkpoint that holds less than
    half of the model's keys (another architecture) is refused before
    anything is loaded. Otherwise the model's state-dict hooks may still
    rename or resize entries (mmpretrain resizes ``pos_embed``), so the
    state is loaded and, where loading fails (a shape error, or a hook's
    assertion), the error is the comparison's."""
    model = unwrap(model)
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state.items()}
    kind = 'quantized checkpoint' if quantized else 'checkpoint'
    model_state = model.state_dict()
    missing, unexpected, shapes = compare_state(model_state, state)
    if model_state and len(missing) * 2 > len(model_state):
        raise _mismatch_error(kind, path, state, missing, unexpected, shapes,
                              quantized)
    try:
        result = model.load_state_dict(state, strict=False)
    except Exception:  # noqa: BLE001 - shapes, or a pre-hook's assertion
        if not (missing or unexpected or shapes):
            raise
        raise _mismatch_error(kind, path, state, missing, unexpected, shapes,
                              quantized) from None
    if result.missing_keys or (quantized and result.unexpected_keys):
        raise _mismatch_error(kind, path, state, result.missing_keys,
                              result.unexpected_keys, shapes, quantized)
    if result.unexpected_keys:
        print_log(f'mmptq: checkpoint keys not used by the model: '
                  f'{result.unexpected_keys[:10]}', logger='current',
                  level=30)


def is_quantized_checkpoint(checkpoint: Dict) -> bool:
    """Whether a loaded checkpoint was written by
    :func:`save_quantized_checkpoint`."""
    return META_KEY in (checkpoint.get('meta') or {})


def load_quantized_checkpoint(model: nn.Module, checkpoint: Dict,
                              path: str) -> QuantSummary:
    """Give the FP ``model`` the quantized structure recorded in the loaded
    quantized ``checkpoint`` (from file ``path``) and load its weights
    strictly; returns the summary it was saved with."""
    model = unwrap(model)
    try:
        summary = restore_quantized(model, checkpoint['meta'][META_KEY])
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None
    load_state_checked(model, checkpoint['state_dict'], path, quantized=True)
    return summary


def save_quantized_checkpoint(model: nn.Module, summary: QuantSummary,
                              path: str) -> None:
    """Write the quantized ``model``'s state dict with what restoring it
    needs (``meta['mmptq']``: resolved quant_cfg, attention discovery,
    summary rows); main process only."""
    if not is_main_process():
        return
    meta = dict(mmptq_version=__version__, **{META_KEY: quant_meta(summary)})
    # renamed over ``path`` only after success: a failed save never leaves
    # a partial file at (or over) ``path``
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        torch.save(dict(meta=meta, state_dict=unwrap(model).state_dict()), f)
    print_log(f'mmptq: quantized checkpoint saved to {path}',
              logger='current')
