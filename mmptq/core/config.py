"""``quant_cfg``: defaults, validation, merging with presets and command
line options, and per-layer rules.

A ``quant_cfg`` is resolved once, where it enters mmptq (``quantize_model``,
the test loop, the tools), into a :class:`QuantConfig`; everything below
receives that object and never resolves again."""
import copy
import os
import re
from typing import Dict, List, Optional, Union

from mmengine.config import Config
from mmengine.logging import print_log

from mmptq.quantizers import check_bits
from mmptq.registry import OBSERVERS, QUANTIZERS, check_type, nearest_names
from .mixed_precision import check_mixed_precision
from .presets import load_quant_cfg

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
    # per-op bits under a budget (core.mixed_precision); resolved by
    # mmptq.apis.sensitivity.allocate_bits into a quant_cfg with overrides
    mixed_precision=None,
    calib=dict(
        num_samples=32, batch_size=4, split='train', seed=0,
        mode='sequential', dataloader=None),
)

OVERRIDE_KEYS = ('name', 'first_op', 'skip', 'w_bits', 'a_bits', 'weight',
                 'act')
CALIB_MODES = ('sequential', 'parallel')


def _check_keys(cfg: dict, allowed, where: str) -> None:
    for key in cfg:
        if key not in allowed:
            raise ValueError(
                f'unknown key {where}{key!r} in quant_cfg; valid keys: '
                f'{nearest_names(key, allowed)}')


class QuantConfig(dict):
    """A resolved ``quant_cfg``: every key present, validated. Made only by
    :func:`resolve_quant_cfg`; its values are plain dicts and lists, so
    ``dict(cfg)`` is what checkpoints and reports store."""


def _quantizer_form(value, where: str) -> str:
    """What a quantizer dict looks like, for the error about ``value``."""
    msg = (f'quant_cfg.{where} must be a quantizer dict, dict(type=..., '
           f'...), e.g. dict(type=\'UniformQuantizer\', '
           f'observer=dict(type=\'MinMaxObserver\')); got {value!r}')
    if isinstance(value, str) and OBSERVERS.get(value) is not None:
        msg += (f' ({value} is an observer: {where.rsplit(".", 1)[-1]}='
                f'dict(observer=dict(type={value!r})))')
    elif isinstance(value, str) and QUANTIZERS.get(value) is not None:
        msg += (f' (write {where.rsplit(".", 1)[-1]}='
                f'dict(type={value!r}))')
    return msg


def _check_quantizer(value, where: str, allow_none: bool = False) -> None:
    """``value`` (the quantizer dict at ``quant_cfg.<where>``) is a dict
    whose ``observer``, if given, is a dict too."""
    if value is None and allow_none:
        return
    if not isinstance(value, dict):
        raise ValueError(_quantizer_form(value, where))
    obs = value.get('observer')
    if obs is not None and not isinstance(obs, dict):
        raise ValueError(
            f'quant_cfg.{where}.observer must be an observer dict, '
            f'dict(type=..., ...), e.g. dict(type=\'MinMaxObserver\'); '
            f'got {obs!r}')


def quantizer_entries(cfg: dict) -> List[tuple]:
    """``(key, quantizer dict)`` of every quantizer dict of a resolved
    quant_cfg, keys as in errors: ``'act'``, ``'norm'``, ``'attn.softmax'``,
    ``'overrides[1].weight'``..."""
    out = [('weight', cfg['weight']), ('act', cfg['act'])]
    if isinstance(cfg['norm'], dict):
        out.append(('norm', cfg['norm']))
    for sub in ('softmax', 'matmul'):
        if isinstance(cfg['attn'].get(sub), dict):
            out.append((f'attn.{sub}', cfg['attn'][sub]))
    for i, ov in enumerate(cfg['overrides']):
        for key in ('weight', 'act'):
            if isinstance(ov, dict) and isinstance(ov.get(key), dict):
                out.append((f'overrides[{i}].{key}', ov[key]))
    return out


def _check_registered(cfg: dict) -> None:
    """Every quantizer and observer ``type`` is registered (an unknown one
    is an error naming its full key, e.g. ``quant_cfg.act.observer``)."""
    for key, qcfg in quantizer_entries(cfg):
        _check_quantizer(qcfg, key)
        if 'type' in qcfg:
            check_type(QUANTIZERS, qcfg['type'], key)
        obs = qcfg.get('observer')
        if isinstance(obs, dict) and 'type' in obs:
            check_type(OBSERVERS, obs['type'], f'{key}.observer')


def _as_quant_cfg(quant_cfg) -> Optional[dict]:
    """A preset name or a config file path (a str) as its quant_cfg dict;
    anything but a dict or None is an error."""
    if isinstance(quant_cfg, (str, os.PathLike)):
        return _strip_delete(load_quant_cfg(os.fspath(quant_cfg)))
    if quant_cfg is not None and not isinstance(quant_cfg, dict):
        raise ValueError(
            f'quant_cfg must be a dict, a preset name (e.g. \'w8a8\') or '
            f'the path of a config file with a quant_cfg section; got '
            f'{type(quant_cfg).__name__} {quant_cfg!r}')
    return quant_cfg


def resolve_quant_cfg(
        quant_cfg: Union[None, str, dict, QuantConfig]) -> QuantConfig:
    """Merge ``quant_cfg`` over ``DEFAULT_QUANT_CFG`` and validate it; a
    :class:`QuantConfig` is returned as it is (it is resolved already); a
    str is a preset name (``'w8a8'``) or a config file path.

    Nested dicts (``attn``, ``calib``) merge key by key; a quantizer dict
    (``weight``, ``act``, ``attn.softmax``) with a new ``type`` replaces the
    default, without one it updates it."""
    if isinstance(quant_cfg, QuantConfig):
        return quant_cfg
    if hasattr(quant_cfg, 'to_dict'):  # a ConfigDict from an mm config
        quant_cfg = quant_cfg.to_dict()
    quant_cfg = _as_quant_cfg(quant_cfg)
    cfg = copy.deepcopy(DEFAULT_QUANT_CFG)
    user = dict(quant_cfg or {})
    _check_keys(user, cfg, '')
    for key, value in user.items():
        if key in ('weight', 'act'):
            _check_quantizer(value, key)
            cfg[key] = _merge_quantizer(cfg[key], value)
        elif key == 'norm':
            _check_quantizer(value, key, allow_none=True)
            cfg[key] = copy.deepcopy(value)
        elif key in ('attn', 'calib') and isinstance(value, dict):
            _check_keys(value, cfg[key], f'{key}.')
            for sub, subval in value.items():
                if sub == 'softmax' and subval:
                    _check_quantizer(subval, 'attn.softmax')
                    cfg[key][sub] = _merge_quantizer(cfg[key][sub], subval)
                elif sub == 'matmul' and isinstance(subval, dict):
                    _check_quantizer(subval, 'attn.matmul')
                    cfg[key][sub] = subval
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
    cfg['overrides'] = override_list(cfg['overrides'])
    _check_registered(cfg)
    cfg['mixed_precision'] = check_mixed_precision(cfg['mixed_precision'])
    for i, ov in enumerate(cfg['overrides']):
        if not isinstance(ov, dict) or (('name' in ov) == bool(
                ov.get('first_op'))):
            raise ValueError(f'quant_cfg.overrides[{i}] must be a dict with '
                             f'either a "name" regex or first_op=True, got '
                             f'{ov!r}')
        _check_keys(ov, OVERRIDE_KEYS, f'overrides[{i}].')
        for key in ('weight', 'act'):
            if key in ov:
                _check_quantizer(ov[key], f'overrides[{i}].{key}')
        if 'first_op' in ov and ov['first_op'] is not True:
            raise ValueError(f'quant_cfg.overrides[{i}].first_op='
                             f'{ov["first_op"]!r}: use first_op=True, or a '
                             f'"name" regex')
        try:
            re.compile(ov.get('name', ''))
        except re.error as e:
            raise ValueError(f'quant_cfg.overrides[{i}].name='
                             f"{ov['name']!r} is not a valid regex: {e}")
        for key in ('w_bits', 'a_bits'):
            if key in ov:
                check_bits(ov[key], f'quant_cfg.overrides[{i}].{key}')
    return QuantConfig(cfg)


def override_list(overrides) -> list:
    """``quant_cfg.overrides`` as the list LayerRules applies in order: a
    list as it is, a dict of named overrides as its values in order (dict
    entries merge by name under ``_base_`` inheritance and preset merging,
    so a model config adds its rules to a preset's instead of replacing
    them)."""
    if isinstance(overrides, dict):
        overrides = list(overrides.values())
    if not isinstance(overrides, (list, tuple)):
        raise ValueError('quant_cfg.overrides must be a list of dicts, or a '
                         'dict of named dicts')
    return list(overrides)


def _combine_overrides(base, update):
    """The overrides of a preset (``update``) merged over a config's
    (``base``): both named (dicts): by name, the preset's entry replacing a
    same-named one; otherwise the config's rules, then the preset's (later
    rules win)."""
    if isinstance(base, dict) and isinstance(update, dict):
        return {**base, **update}
    return override_list(base) + override_list(update)


def _merge_quantizer(base: dict, update: dict) -> dict:
    if 'type' in update and update['type'] != base.get('type'):
        return copy.deepcopy(update)
    return {**copy.deepcopy(base), **copy.deepcopy(update)}


def merge_quant_cfg(cfg: Config,
                    quant_cfg: Optional[str] = None,
                    w_bits: Optional[int] = None,
                    a_bits: Optional[int] = None,
                    calib_samples: Optional[int] = None,
                    cfg_options: Optional[dict] = None) -> Optional[QuantConfig]:
    """The resolved ``quant_cfg`` of a run: the config's own section with a
    preset (name or path) merged over it and the command line overrides
    applied; None when nothing asks to quantize. The ``quant_cfg.*`` keys of
    ``cfg_options`` (``--cfg-options``) apply last, over the preset, e.g.
    ``quant_cfg.reconstruction.iters=500``."""
    options = quant_options(cfg_options)
    merged = cfg.get('quant_cfg')
    merged = copy.deepcopy(merged.to_dict() if hasattr(merged, 'to_dict')
                           else merged)
    if quant_cfg is not None:
        preset = copy.deepcopy(load_quant_cfg(quant_cfg))
        base = merged or {}
        overrides = None
        if 'overrides' in preset and 'overrides' in base:  # add, not replace
            overrides = _combine_overrides(base.pop('overrides'),
                                           preset.pop('overrides'))
        merged = Config(dict(quant_cfg=base))
        merged.merge_from_dict(dict(quant_cfg=preset))
        merged = merged.quant_cfg.to_dict()
        if overrides is not None:
            merged['overrides'] = overrides
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
    return resolve_quant_cfg(merged) if options else resolved


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


class LayerRules:
    """Per-layer settings from a resolved quant_cfg and its overrides.

    An override applies to a layer when its ``name`` regex matches the
    layer name in full (``re.fullmatch``), or, with ``first_op=True``, to
    ``first_op``: the first op with a weight that the model runs (the one
    that reads the image: patch embedding or stem conv, whatever its name).
    Later overrides win."""

    def __init__(self, cfg: dict, first_op: Optional[str] = None) -> None:
        self.cfg = cfg
        self.overrides = [
            (re.compile(o['name']) if 'name' in o else None, o)
            for o in cfg['overrides']
        ]
        self.first_op = first_op
        self.used = [False] * len(self.overrides)

    def _matches(self, pattern: Optional[re.Pattern], names) -> bool:
        if pattern is None:  # first_op=True
            return self.first_op is not None and names[0] == self.first_op
        return any(pattern.fullmatch(n) for n in names)

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
            if not self._matches(pattern, names):
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
        """The overrides that matched no layer, as ``name='regex'`` or
        ``first_op=True``."""
        return [f"name={o['name']!r}" if 'name' in o else 'first_op=True'
                for (_, o), u in zip(self.overrides, self.used) if not u]
