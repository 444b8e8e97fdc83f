"""Setting up the Runner of a workflow: load an OpenMMLab config, make
its test loop quantize, choose the work_dir and the visualizer, build the
Runner as the upstream tools do."""
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config, ConfigDict
from mmengine.hub import get_config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmptq.core import QuantConfig


def load_config(path: str) -> Config:
    """A config file, or a packaged one as ``'mmdet::swin/....py'``."""
    return get_config(path) if '::' in path else Config.fromfile(path)



def configure_quant_test(cfg: Config,
                         checkpoint: Optional[str],
                         quant_cfg: Optional[QuantConfig],
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
        checkpoint=checkpoint,
        quant_cfg=None if quant_cfg is None else dict(quant_cfg),
        fp_baseline=fp_baseline,
        save_quantized=save_quantized,
        evaluate=evaluate,
        unsafe_load=unsafe_load,
        **{k: v for k, v in test_cfg.items() if k == 'fp16'})
    cfg.quant_cfg = None if quant_cfg is None else dict(quant_cfg)
    cfg.load_from = None  # the loop loads it (see QuantTestLoop)
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
    return RUNNERS.build(cfg)
