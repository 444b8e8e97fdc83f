"""``CPUDistRunner``: mmengine's Runner, plus distributed runs (torchrun,
slurm, mpi) on machines without CUDA, e.g. distributed calibration on CPU
with the gloo backend.

mmengine 0.10's ``init_dist`` calls ``torch.cuda.set_device`` for every
launcher and ``Runner.wrap_model`` gives ``MMDistributedDataParallel`` a
CUDA ``device_ids``; both fail without CUDA. Where CUDA is available this
runner is exactly mmengine's Runner. Select it with
``runner_type='mmptq.CPUDistRunner'`` (a config key or ``--cfg-options``).
"""
from typing import Dict, Optional
from unittest import mock

import torch
from mmengine.dist import init_dist, is_distributed
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmptq.registry import RUNNERS


def init_dist_without_cuda(launcher: str, backend: str = 'gloo',
                           **kwargs) -> None:
    """mmengine's ``init_dist`` on a machine without CUDA: the launcher's
    environment handling is mmengine's own, ``torch.cuda.set_device`` is
    skipped (only during this call) and 'nccl' becomes 'gloo'."""
    if backend == 'nccl':
        print_log('mmptq: no CUDA device: distributed backend nccl → gloo',
                  logger='current', level=30)
        backend = 'gloo'
    with mock.patch.object(torch.cuda, 'set_device', lambda device: None):
        init_dist(launcher, backend=backend, **kwargs)


@RUNNERS.register_module()
class CPUDistRunner(Runner):
    """mmengine's Runner that also runs distributed without CUDA (see the
    module docstring); identical to Runner where CUDA is available."""

    def setup_env(self, env_cfg: Dict) -> None:
        if (self.distributed and not is_distributed()
                and not torch.cuda.is_available()):
            init_dist_without_cuda(self.launcher,
                                   **dict(env_cfg.get('dist_cfg', {})))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: Optional[Dict],
                   model: nn.Module) -> nn.Module:
        if (self.distributed and not torch.cuda.is_available()
                and not is_model_wrapper(model)):
            # a CPU module takes no device_ids (DDP raises otherwise)
            cfg = dict(model_wrapper_cfg or dict(
                type='MMDistributedDataParallel',
                broadcast_buffers=False,
                find_unused_parameters=self.cfg.get(
                    'find_unused_parameters', False)))
            wrapper = MODEL_WRAPPERS.get(
                cfg.setdefault('type', 'MMDistributedDataParallel'))
            if isinstance(wrapper, type) and issubclass(
                    wrapper, DistributedDataParallel):
                cfg.setdefault('device_ids', None)
            model_wrapper_cfg = cfg
        return super().wrap_model(model_wrapper_cfg, model)
