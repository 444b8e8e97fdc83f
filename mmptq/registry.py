"""Registries of mmptq (scope ``mmptq``).

``OBSERVERS``, ``QUANTIZERS``, ``MODEL_TRANSFORMS`` and ``RECONSTRUCTIONS``
are mmptq's own concepts; ``MODELS``, ``LOOPS`` and ``RUNNERS`` are children
of mmengine's registries, so ``dict(type='mmptq.QuantTestLoop')`` resolves from
any OpenMMLab config that imports mmptq.
"""
import difflib
from typing import Any, Optional

from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import DefaultScope, Registry

OBSERVERS = Registry('observer', scope='mmptq', locations=['mmptq.observers'])
QUANTIZERS = Registry(
    'quantizer', scope='mmptq', locations=['mmptq.quantizers'])
MODEL_TRANSFORMS = Registry(
    'model transform', scope='mmptq', locations=['mmptq.transforms'])
RECONSTRUCTIONS = Registry(
    'reconstruction', scope='mmptq', locations=['mmptq.reconstruction'])
MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='mmptq',
    locations=['mmptq.models'])
LOOPS = Registry(
    'loop', parent=MMENGINE_LOOPS, scope='mmptq', locations=['mmptq.engine'])
RUNNERS = Registry(
    'runner', parent=MMENGINE_RUNNERS, scope='mmptq',
    locations=['mmptq.engine'])


def nearest_names(name: str, choices, n: int = 3) -> str:
    """Comma-separated names in ``choices`` closest to ``name``."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
    return ', '.join(close or choices[:8])


def check_type(registry: Registry, type_name: Any, key: str) -> None:
    """An unknown ``type`` (a name) at ``quant_cfg.<key>`` is a ValueError
    that names the key and the nearest registered names."""
    if isinstance(type_name, str):
        bare = type_name.split('.')[-1]
        if registry.get(bare) is None:
            raise ValueError(
                f'quant_cfg.{key}: unknown {registry.name} type '
                f'{type_name!r}; did you mean: '
                f'{nearest_names(bare, registry.module_dict)}?')


def build_checked(registry: Registry,
                  cfg: dict,
                  key: str,
                  default_args: Optional[dict] = None) -> Any:
    """Build ``cfg`` from ``registry``; an unknown ``type`` is a ValueError
    that names the config key and the nearest registered names."""
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise ValueError(f'quant_cfg.{key} must be a dict with a "type" key, '
                         f'got {cfg!r}')
    check_type(registry, cfg['type'], key)
    if isinstance(cfg['type'], str):
        cfg = dict(cfg, type=cfg['type'].split('.')[-1])
    with DefaultScope.overwrite_default_scope('mmptq'):
        return registry.build(cfg, default_args=default_args)
