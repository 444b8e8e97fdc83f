"""Quantized checkpoints: what to save next to the weights, and how to
rebuild the quantized structure of a model from it without calibrating."""
from dataclasses import asdict
from typing import Dict

from torch import nn

from mmptq.version import __version__
from mmptq.nn import apply_adapters
from mmptq.nn.attention import Call
from mmptq.registry import MODEL_TRANSFORMS, nearest_names
from .config import resolve_quant_cfg
from .quantize import freeze, prepare
from .summary import QuantSummary

META_KEY = 'mmptq'


def quant_meta(summary: QuantSummary) -> Dict:
    """The ``meta['mmptq']`` entry of a quantized checkpoint: mmptq version,
    resolved quant_cfg, discovery records (attention calls; the weighted
    calls of Conv / Linear subclasses with their own forward) and the
    summary rows."""
    return dict(
        version=__version__,
        quant_cfg=dict(summary.quant_cfg),
        calls={
            host: [_call_meta(c) for c in calls]
            for host, calls in summary.calls.items()
        },
        call_counts=dict(summary.call_counts),
        first_op=summary.first_op,
        summary=[dict(r) for r in summary],
        transforms=[dict(t) for t in summary.transforms],
        reconstruction=[dict(r) for r in summary.reconstruction])


def _call_meta(call: Call) -> Dict:
    """A discovery record as saved: ``weight`` only for the weighted calls
    of the Conv / Linear subclasses with their own forward."""
    meta = dict(asdict(call), shapes=[list(s) for s in call.shapes],
                out_shape=list(call.out_shape))
    if not call.weight:
        del meta['weight']
    return meta


def restore_quantized(model: nn.Module, meta: Dict) -> QuantSummary:
    """Give ``model`` (FP, as built from its config) the quantized structure
    recorded in ``meta`` (from ``quant_meta``): adapters, wrapped ops and
    attention sites, frozen and ready for ``load_state_dict``."""
    calls = {
        host: [Call(c['kind'], tuple(tuple(s) for s in c['shapes']),
                    tuple(c['out_shape']), c.get('weight', ''))
               for c in host_calls]
        for host, host_calls in meta['calls'].items()
    }
    apply_adapters(model)
    modules = dict(model.named_modules())
    absent = [host for host in calls if host not in modules]
    if absent:
        raise ValueError(
            f'quantized checkpoint does not match the model of this config: '
            f'it quantizes attention in {len(absent)} module(s) the model '
            f'lacks {absent[:5]}. Check that the quantized checkpoint was '
            f'made from this config')
    # transforms are not run again: their effect is in the saved weights;
    # only parameters they added must exist to be loaded
    for row in meta.get('transforms', []):
        name = row['transform']
        transform = MODEL_TRANSFORMS.get(name)
        if transform is None:
            known = nearest_names(name, MODEL_TRANSFORMS.module_dict)
            raise ValueError(
                f'the quantized checkpoint was made with the model transform '
                f'{name!r}, which this mmptq does not have (known: {known})')
        transform.restore(model, row)
    summary = prepare(model, resolve_quant_cfg(meta['quant_cfg']), calls,
                      calibrate_weights=False,
                      call_counts=meta.get('call_counts'),
                      first_op=meta.get('first_op'))
    summary.transforms = list(meta.get('transforms', []))
    summary.reconstruction = list(meta.get('reconstruction', []))
    freeze(model)
    return summary
