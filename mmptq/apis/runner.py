"""Config surgery shared by the tools: turn an OpenMMLab config into one
whose test loop quantizes, and build its Runner."""
import copy
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.runner import Runner

from .presets import load_quant_cfg
from .config import resolve_quant_cfg


def merge_quant_cfg(cfg: Config,
                    quant_cfg: Optional[str] = None,
                    w_bits: Optional[int] = None,
                    a_bits: Optional[int] = None,
                    calib_samples: Optional[int] = None,
                    cfg_options: Optional[dict] = None) -> Optional[dict]:
    """The config's ``quant_cfg`` with a preset (name or path) merged over
    it and the CLI overrides applied; None when nothing asks to quantize.
    The ``quant_cfg.*`` keys of ``cfg_options`` (``--cfg-options``) apply
    last, over the preset, e.g. ``quant_cfg.reconstruction.iters=500``."""
    options = quant_options(cfg_options)
    merged = cfg.get('quant_cfg')
    merged = copy.deepcopy(merged.to_dict() if hasattr(merged, 'to_dict')
                           else merged)
    if quant_cfg is not None:
        preset = load_quant_cfg(quant_cfg)
        merged = Config(dict(quant_cfg=merged or {}))
        merged.merge_from_dict(dict(quant_cfg=preset))
        merged = merged.quant_cfg.to_dict()
    overrides = dict(w_bits=w_bits, a_bits=a_bits)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if calib_samples is not None:
        overrides['calib'] = dict(num_samples=calib_samples)
    if merged is None and not overrides and not options:
        return None
    merged = _strip_delete(merged or {})
    for key, value in overrides.items():
        if key == 'calib':
            merged.setdefault('calib', {}).update(value)
        else:
            merged[key] = value
    resolved = resolve_quant_cfg(merged)
    for key, value in options.items():
        path = key.split('.')
        if len(path) > 2 and resolved.get(path[1], {}) is None:
            print_log(f'mmptq: --cfg-options {key} ignored: this quant_cfg '
                      f'has no {path[1]}', logger='current', level=30)
            continue
        wrapped = Config(dict(quant_cfg=merged))
        wrapped.merge_from_dict({key: value})
        merged = wrapped.quant_cfg.to_dict()
    resolve_quant_cfg(merged)  # fail early, before anything is built
    return merged


def quant_options(cfg_options: Optional[dict]) -> dict:
    """The ``quant_cfg.*`` entries of ``--cfg-options``."""
    return {k: v for k, v in (cfg_options or {}).items()
            if k.startswith('quant_cfg.')}


def model_options(cfg_options: Optional[dict]) -> dict:
    """The other entries (they apply to the model config)."""
    return {k: v for k, v in (cfg_options or {}).items()
            if not k.startswith('quant_cfg.')}


def _strip_delete(node):
    """Drop ``_delete_`` flags that had nothing to delete: mmengine keeps
    them where the base config lacks the key (a quant_cfg file or section
    without ``_base_``); replacing the defaults is what resolving does."""
    if isinstance(node, dict):
        return {k: _strip_delete(v) for k, v in node.items()
                if k != '_delete_'}
    if isinstance(node, (list, tuple)):
        return type(node)(_strip_delete(v) for v in node)
    return node


def configure_quant_test(cfg: Config,
                         checkpoint: Optional[str],
                         quant_cfg: Optional[dict],
                         fp_baseline: bool = False,
                         save_quantized: Optional[str] = None,
                         evaluate: bool = True,
                         unsafe_load: bool = False) -> Config:
    """Swap ``cfg.test_cfg`` for mmptq's ``QuantTestLoop`` (which loads
    ``checkpoint``, quantizes with ``quant_cfg`` or restores a quantized
    checkpoint, and evaluates) and make the config import mmptq."""
    imports = cfg.get('custom_imports', dict(imports=[]))
    if 'mmptq' not in imports['imports']:
        imports = dict(imports, imports=list(imports['imports']) + ['mmptq'])
    cfg.custom_imports = dict(imports, allow_failed_imports=False)
    test_cfg = dict(cfg.get('test_cfg') or {})
    test_cfg.pop('type', None)
    cfg.test_cfg = ConfigDict(
        type='mmptq.QuantTestLoop',
        quant_cfg=quant_cfg,
        fp_baseline=fp_baseline,
        save_quantized=save_quantized,
        evaluate=evaluate,
        unsafe_load=unsafe_load,
        **{k: v for k, v in test_cfg.items() if k == 'fp16'})
    cfg.quant_cfg = quant_cfg
    cfg.load_from = checkpoint
    return cfg


def set_work_dir(cfg: Config, config_path: str,
                 work_dir: Optional[str]) -> None:
    """CLI > config > ./work_dirs/<config name>, as the upstream tools."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def enable_visualization(cfg: Config, show_dir: str) -> None:
    """Draw test predictions into ``show_dir`` with the config's own
    visualization hook (mmdet, mmseg and mmpretrain name it differently)."""
    hook = cfg.default_hooks.get('visualization') if cfg.get(
        'default_hooks') else None
    if hook is None:
        raise ValueError('--show-dir needs a "visualization" entry in '
                         'default_hooks (as in the upstream configs)')
    hook_type = hook['type'].split('.')[-1]
    if hook_type == 'VisualizationHook':  # mmpretrain
        hook.update(enable=True, out_dir=show_dir)
    elif hook_type == 'SegVisualizationHook':
        hook.update(draw=True)
        cfg.visualizer['save_dir'] = show_dir
    else:  # DetVisualizationHook and look-alikes
        hook.update(draw=True, test_out_dir=show_dir)


def build_runner(cfg: Config) -> Runner:
    """The Runner the upstream tools build: the default one, or
    ``cfg.runner_type`` from the registry."""
    if cfg.get('launcher', 'none') != 'none' and \
            not torch.cuda.is_available():
        # mmengine's launcher needs CUDA; this runner is it without CUDA
        cfg.setdefault('runner_type', 'mmptq.CPUDistRunner')
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    from mmengine.registry import RUNNERS
    return RUNNERS.build(cfg)
