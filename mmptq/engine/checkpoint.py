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
import os.path as osp
import pickle
import re
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from mmptq.core import (META_KEY, QuantSummary, quant_meta,
                        restore_quantized)
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
        return torch.load(
            filename, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(safe_globals_list()):
            return torch.load(
                filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
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
                       meta_keys: Tuple[str, ...] = (
                           'mmengine_version', 'dataset_meta', 'epoch',
                           'iter', 'seed', 'experiment_name', 'cfg')
                       ) -> str:
    """Write ``src``'s weights without optimizer, scheduler and message-hub
    state to ``dst`` (the upstream ``publish_model`` step); returns dst's
    sha256. Only ``meta_keys`` of its ``meta`` are kept; with ``dtype``
    (e.g. ``torch.float16``) floating-point tensors are stored in it
    (loading casts them back to the model's dtype)."""
    import hashlib
    import os

    ckpt = load_checkpoint_file(src)
    if 'state_dict' not in ckpt:
        raise KeyError(f'{src} has no "state_dict": not a Runner checkpoint')
    meta = {k: v for k, v in ckpt.get('meta', {}).items() if k in meta_keys}
    state = ckpt['state_dict']
    if dtype is not None:
        state = type(state)((k, v.to(dtype) if v.is_floating_point() else v)
                            for k, v in state.items())
        meta['stored_dtype'] = str(dtype)
    out = dict(state_dict=state, meta=meta)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(out, dst)
    with open(dst, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP-style wrapper (or the model itself)."""
    return model.module if is_model_wrapper(model) else model


def load_state_checked(model: nn.Module, state: Dict, path: str,
                       quantized: bool = False) -> None:
    """Load ``state`` (from checkpoint ``path``) into ``model``; missing
    keys or shape mismatches are errors that name the checkpoint, keys the
    model does not use are a warning (an error for quantized checkpoints).
    A ``module.`` prefix (DDP) is dropped."""
    model = unwrap(model)
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state.items()}
    kind = 'quantized checkpoint' if quantized else 'checkpoint'
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # strict=False still fails on shapes
        shapes = [line.strip() for line in str(e).splitlines()
                  if 'size mismatch' in line]
        if not shapes:
            raise
        raise ValueError(
            f'{kind} {path} does not match the model of this config: '
            f'{len(shapes)} tensors differ in shape, {shapes[:3]}. Check '
            f'that config and checkpoint belong together (num_classes, '
            f'channels, ...)') from None
    if result.missing_keys or (quantized and result.unexpected_keys):
        raise ValueError(
            f'{kind} {path} does not match the model of this config: '
            f'{len(result.missing_keys)} missing keys '
            f'{result.missing_keys[:5]}, {len(result.unexpected_keys)} '
            f'unexpected keys {result.unexpected_keys[:5]}. Check that '
            f'config and checkpoint belong together'
            + (' and that the quantized checkpoint was made from this '
               'config' if quantized else ''))
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
    torch.save(dict(meta=meta, state_dict=unwrap(model).state_dict()), path)
    print_log(f'mmptq: quantized checkpoint saved to {path}',
              logger='current')
