"""``quant_cfg``: defaults, validation and per-layer resolution."""
import copy
import re
from typing import Dict, List, Optional

from mmptq.quantizers import check_bits
from mmptq.registry import nearest_names

#: the best generic recipe: every key a user leaves out comes from here
DEFAULT_QUANT_CFG: Dict = dict(
    w_bits=8,
    a_bits=8,
    weight=dict(
        type='UniformQuantizer',
        granularity='channel',
        observer=dict(type='MSEObserver', p=2.0)),
    act=dict(
        type='UniformQuantizer',
        granularity='tensor',
        observer=dict(type='PercentileSearchObserver')),
    # input quantizer of every LayerNorm (at a_bits), e.g. FQ-ViT's
    # dict(type='PTFQuantizer'); None: LayerNorm stays FP
    norm=None,
    attn=dict(
        matmul=True,
        softmax=dict(
            type='LogSqrt2Quantizer',
            observer=dict(type='PercentileSearchObserver')),
        # bits of the matmul operands and the softmax (default: a_bits);
        # softmax_bits: of the softmax alone (FQ-ViT's Attn4)
        bits=None,
        softmax_bits=None),
    transforms=[],
    reconstruction=None,
    overrides=[],
    calib=dict(
        num_samples=32, batch_size=4, split='train', seed=0,
        mode='sequential', dataloader=None),
)

OVERRIDE_KEYS = ('name', 'skip', 'w_bits', 'a_bits', 'weight', 'act')
CALIB_MODES = ('sequential', 'parallel')


def _check_keys(cfg: dict, allowed, where: str) -> None:
    for key in cfg:
        if key not in allowed:
            raise ValueError(
                f'unknown key {where}{key!r} in quant_cfg; valid keys: '
                f'{nearest_names(key, allowed)}')


def resolve_quant_cfg(quant_cfg: Optional[dict]) -> dict:
    """Merge ``quant_cfg`` over ``DEFAULT_QUANT_CFG`` and validate it.

    Nested dicts (``attn``, ``calib``) merge key by key; a quantizer dict
    (``weight``, ``act``, ``attn.softmax``) with a new ``type`` replaces the
    default, without one it updates it."""
    cfg = copy.deepcopy(DEFAULT_QUANT_CFG)
    user = dict(quant_cfg or {})
    _check_keys(user, cfg, '')
    for key, value in user.items():
        if key in ('weight', 'act') and isinstance(value, dict):
            cfg[key] = _merge_quantizer(cfg[key], value)
        elif key in ('attn', 'calib') and isinstance(value, dict):
            _check_keys(value, cfg[key], f'{key}.')
            for sub, subval in value.items():
                if sub == 'softmax' and isinstance(subval, dict):
                    cfg[key][sub] = _merge_quantizer(cfg[key][sub], subval)
                else:
                    cfg[key][sub] = subval
        else:
            cfg[key] = copy.deepcopy(value)
    check_bits(cfg['w_bits'], 'quant_cfg.w_bits')
    check_bits(cfg['a_bits'], 'quant_cfg.a_bits')
    for key in ('bits', 'softmax_bits'):
        if cfg['attn'].get(key) is not None:
            check_bits(cfg['attn'][key], f'quant_cfg.attn.{key}')
    if cfg['norm'] is not None and not isinstance(cfg['norm'], dict):
        raise ValueError(f"quant_cfg.norm must be a quantizer dict or None, "
                         f"got {cfg['norm']!r}")
    if cfg['calib']['mode'] not in CALIB_MODES:
        raise ValueError(f"quant_cfg.calib.mode={cfg['calib']['mode']!r} is "
                         f'not one of {CALIB_MODES}')
    if not isinstance(cfg['overrides'], (list, tuple)):
        raise ValueError('quant_cfg.overrides must be a list of dicts')
    for i, ov in enumerate(cfg['overrides']):
        if not isinstance(ov, dict) or 'name' not in ov:
            raise ValueError(f'quant_cfg.overrides[{i}] must be a dict with '
                             f'a "name" regex, got {ov!r}')
        _check_keys(ov, OVERRIDE_KEYS, f'overrides[{i}].')
        try:
            re.compile(ov['name'])
        except re.error as e:
            raise ValueError(f'quant_cfg.overrides[{i}].name='
                             f"{ov['name']!r} is not a valid regex: {e}")
        for key in ('w_bits', 'a_bits'):
            if key in ov:
                check_bits(ov[key], f'quant_cfg.overrides[{i}].{key}')
    return cfg


def _merge_quantizer(base: dict, update: dict) -> dict:
    if 'type' in update and update['type'] != base.get('type'):
        return copy.deepcopy(update)
    return {**copy.deepcopy(base), **copy.deepcopy(update)}


class LayerRules:
    """Per-layer settings from a resolved quant_cfg and its overrides.

    An override applies to a layer when its ``name`` regex matches the
    layer name in full (``re.fullmatch``); later overrides win."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.overrides = [(re.compile(o['name']), o) for o in cfg['overrides']]
        self.used = [False] * len(self.overrides)

    def for_layer(self, *names: str) -> dict:
        """dict(skip, w_bits, a_bits, weight, act) for a layer known by
        ``names`` (its own name, and for attention ops the host's)."""
        rule = dict(
            skip=False,
            w_bits=self.cfg['w_bits'],
            a_bits=self.cfg['a_bits'],
            weight=copy.deepcopy(self.cfg['weight']),
            act=copy.deepcopy(self.cfg['act']))
        for i, (pattern, ov) in enumerate(self.overrides):
            if not any(pattern.fullmatch(n) for n in names):
                continue
            self.used[i] = True
            for key in ('skip', 'w_bits', 'a_bits'):
                if key in ov:
                    rule[key] = ov[key]
            for key in ('weight', 'act'):
                if key in ov:
                    rule[key] = _merge_quantizer(rule[key], ov[key])
        return rule

    def unused(self) -> List[str]:
        """Override regexes that matched no layer."""
        return [o['name'] for (_, o), u in zip(self.overrides, self.used)
                if not u]
