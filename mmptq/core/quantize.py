"""``quantize_model``: the one entry point of mmptq."""
import hashlib
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from mmengine import dist
from mmengine.logging import print_log
from mmengine.utils import ProgressBar
from torch import nn

from mmptq.nn import (AttentionCallRouter, QuantConv1d, QuantConv2d,
                      QuantConv3d, QuantConvTranspose2d, QuantLayerNorm,
                      QuantLinear, apply_adapters, attention_sites,
                      record_calls)
from mmptq.nn.attention import build_site
from mmptq.nn.modules import QuantWeightMixin
from mmptq.nn.own_forward import own_forward_class, own_weight_calls
from mmptq.quantizers import (BaseQuantizer, PerCallQuantizer,
                              reset_call_counters)
from mmptq.registry import (MODEL_TRANSFORMS, QUANTIZERS, RECONSTRUCTIONS,
                            build_checked)
from mmptq.transforms import TransformContext
from .config import LayerRules, QuantConfig, resolve_quant_cfg
from .summary import QuantSummary

#: float class → quantized class; subclasses that keep the parent's forward
#: (mmcv's wrappers, NonDynamicallyQuantizableLinear) are wrapped too
WRAPPERS: Dict[type, type] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
}
#: norms whose input ``quant_cfg.norm`` quantizes (FQ-ViT's PTF)
NORM_WRAPPERS: Dict[type, type] = {nn.LayerNorm: QuantLayerNorm}
#: subclasses whose own forward is known to compute the parent's function
EQUIVALENT_FORWARD = ('mmcv.cnn.bricks.wrappers',)


def _overridden_base(mod: nn.Module,
                     wrappers: Dict[type, type] = WRAPPERS) -> Optional[type]:
    """The class of ``wrappers`` whose forward the class of ``mod``
    overrides (None when it keeps it, its forward is known to be
    equivalent, or it has no class of ``wrappers``)."""
    if isinstance(mod, (QuantWeightMixin, QuantLayerNorm)):
        return None
    base = next((b for b in type(mod).__mro__ if b in wrappers), None)
    if base is None or type(mod).forward is base.forward or \
            type(mod).__module__ in EQUIVALENT_FORWARD:
        return None
    return base


def _wrapper_for(mod: nn.Module,
                 wrappers: Dict[type, type] = WRAPPERS,
                 calls: Optional[list] = None
                 ) -> Tuple[Optional[type], str]:
    """(quantized class, '') or (None, reason it stays FP). A subclass with
    its own forward is quantized (``mmptq.nn.own_forward``) when ``calls``,
    its calls recorded by ``discover``, hold exactly one call of the
    parent's functional op with its own weight."""
    if isinstance(mod, (QuantWeightMixin, QuantLayerNorm)):
        return None, 'already quantized'
    for base in type(mod).__mro__:
        if base in wrappers:
            if _overridden_base(mod, wrappers) is None:
                return wrappers[base], ''
            return _own_forward_wrapper(mod, base, wrappers[base], calls)
    return None, f'no quantized op for {type(mod).__name__}'


def _own_forward_wrapper(mod: nn.Module, base: type, quant: type,
                         calls: Optional[list]
                         ) -> Tuple[Optional[type], str]:
    overrides = (f'{type(mod).__name__} overrides the forward of '
                 f'{base.__name__}')
    functional = getattr(quant, 'functional', None)
    if functional is None:
        return None, overrides
    own, other = own_weight_calls(calls or [], functional)
    op = f'F.{quant.kind}'
    if own == 1:
        return own_forward_class(type(mod), quant), ''
    if own > 1:
        return None, (f'{overrides}: its forward calls {op} with its own '
                      f'weight {own} times')
    if other:
        return None, (f'{overrides}: its forward does not end in {op} with '
                      f'its own weight (it calls {op} with another weight)')
    return None, (f'{overrides}: its forward does not end in {op} with its '
                  f'own weight (no such call in the discovery forward)')


def run_batch(model: nn.Module) -> Callable:
    """How to feed one calibration batch to ``model``: OpenMMLab models go
    through ``test_step`` (data_preprocessor + predict); plain modules take
    a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if hasattr(model, 'test_step') and hasattr(model, 'data_preprocessor'):
        return model.test_step

    def call(batch):
        if isinstance(batch, dict):
            return model(**batch)
        if isinstance(batch, (tuple, list)):
            return model(*batch)
        return model(batch)

    return call


def _holders(model: nn.Module) -> Dict[int, List[Tuple[nn.Module, str]]]:
    """id(module) -> every (parent, attribute) that holds it: a module can
    sit under several parents (RTMDet's head shares its convs across
    levels), while ``named_modules`` names it once."""
    out: Dict[int, List[Tuple[nn.Module, str]]] = {}
    seen = set()
    for _, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if child is not None and (id(parent), attr) not in seen:
                seen.add((id(parent), attr))
                out.setdefault(id(child), []).append((parent, attr))
    return out


def _replace(holders: Dict[int, List[Tuple[nn.Module, str]]],
             old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` in every place that holds ``old``."""
    for parent, attr in holders[id(old)]:
        setattr(parent, attr, new)


def _config_key(name: str) -> str:
    """The quant_cfg key of the quantizer ``name`` when its caller does not
    give it: ``weight`` for ``<layer>.weight``, ``attn.softmax`` for
    ``<op>.softmax``, ``act`` for the others."""
    if name.endswith('.weight'):
        return 'weight'
    if name.endswith('.softmax'):
        return 'attn.softmax'
    return 'act'


def _quantizer(cfg: dict, bits: int, name: str, key: Optional[str] = None,
               **defaults) -> nn.Module:
    """The quantizer ``name`` built from ``cfg``, the dict at
    ``quant_cfg.<key>`` (errors about it and its observer name that key)."""
    key = key or _config_key(name)
    args = {**defaults, **cfg, 'bits': bits, 'name': name}
    with BaseQuantizer.config_key(key):
        return build_checked(QUANTIZERS, args, key)


def _input_quantizer(cfg: dict, bits: int, name: str,
                     calls: int = 1, key: str = 'act') -> nn.Module:
    """The input quantizer of an op; one per call (``PerCallQuantizer``)
    for an op that runs ``calls`` > 1 times per forward."""
    if calls > 1:
        return PerCallQuantizer([
            _quantizer(cfg, bits, f'{name}.input@{k}', key)
            for k in range(calls)
        ])
    return _quantizer(cfg, bits, f'{name}.input', key)


def find_quantizers(model: nn.Module) -> List[BaseQuantizer]:
    """Every fake quantizer in ``model``, in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, BaseQuantizer)]


def _has_matrix_weight(mod: nn.Module) -> bool:
    weight = getattr(mod, 'weight', None)
    return isinstance(weight, torch.Tensor) and weight.dim() >= 2


def discover(
    model: nn.Module, batch, run: Callable
) -> Tuple[Dict[str, list], Dict[str, int], Optional[str]]:
    """Apply the adapters, then run one FP forward of ``batch`` and return
    the matmul / softmax / SDPA calls of every module; for the modules that
    run more than once per forward of the model (a head shared by the FPN
    levels), their number of calls; and the first op with a weight that the
    forward runs (the layer that reads the image, for the ``first_op``
    overrides). For the Conv / Linear subclasses with their own forward,
    ``calls`` also holds their calls of functional weighted ops
    (``Call.weight`` 'own' / 'other'; ``_wrapper_for`` reads them). See
    ``prepare``."""
    for name, adapter in apply_adapters(model).items():
        print_log(f'mmptq: {name} → {adapter}', logger='current')
    counts: Dict[str, int] = {}  # in the order of the first call
    # Conv / Linear subclasses with their own forward: their calls of the
    # functional weighted ops, to tell which compute the parent's op
    own_forward = [m for name, m in model.named_modules()
                   if name and _has_matrix_weight(m) and _overridden_base(m)]
    calls = record_calls(model, lambda: run(batch), counts, own_forward)
    for name, host_calls in calls.items():  # never mixed with attention
        if any(c.weight == '' for c in host_calls):
            calls[name] = [c for c in host_calls if c.weight == '']
    forwards = max(counts.get('', 1), 1)  # of the root: once per batch
    modules = dict(model.named_modules())
    first_op = next((name for name in counts if name and
                     _has_matrix_weight(modules[name])), None)
    return calls, {name: n // forwards for name, n in counts.items()
                   if name and n // forwards > 1}, first_op


def prepare(model: nn.Module,
            cfg: QuantConfig,
            calls: Dict[str, list],
            calibrate_weights: bool = True,
            call_counts: Optional[Dict[str, int]] = None,
            first_op: Optional[str] = None) -> QuantSummary:
    """Wrap every quantizable op according to the resolved ``cfg`` and the
    recorded attention ``calls`` (from ``discover``, or saved with a
    quantized checkpoint, then without ``calibrate_weights``). An op that
    runs K > 1 times per forward (``call_counts``) gets a
    ``PerCallQuantizer`` input quantizer (one per call; the weight
    quantizer is shared); ``first_op`` is the op the ``first_op``
    overrides select. Returns the per-layer summary, which also keeps
    ``cfg``, ``calls``, ``call_counts`` and ``first_op``."""
    call_counts = dict(call_counts or {})
    summary = QuantSummary(quant_cfg=cfg, calls=calls,
                           call_counts=call_counts, first_op=first_op)
    rules = LayerRules(cfg, first_op)
    holders = _holders(model)

    for name, mod in list(model.named_modules()):
        if not name or not _has_matrix_weight(mod):
            continue
        wrapper, reason = _wrapper_for(mod, calls=calls.get(name))
        own = _overridden_base(mod) is not None
        rule = rules.for_layer(name)
        if wrapper is None:
            summary.add(name, type(mod).__name__, reason=reason,
                        own_forward=own)
            continue
        if rule['skip']:
            summary.add(name, wrapper.kind, reason='skipped by override',
                        own_forward=own)
            continue
        new = wrapper.from_float(mod)
        new.train(mod.training)
        wq = _quantizer(rule['weight'], rule['w_bits'], f'{name}.weight',
                        ch_axis=wrapper.weight_ch_axis)
        aq = _input_quantizer(rule['act'], rule['a_bits'], name,
                              call_counts.get(name, 1))
        new.attach(wq, aq)
        for q in aq.modules() if aq is not None else ():
            if hasattr(q, 'bind_consumer'):  # calibrated by the op's output
                q.bind_consumer(new)
        if calibrate_weights:
            new.calibrate_weight()
        _replace(holders, mod, new)
        summary.add(name, wrapper.kind, weight=wq, act=aq, own_forward=own)

    for name, mod in list(model.named_modules()):
        if not cfg['norm'] or not name or not isinstance(mod, nn.LayerNorm):
            continue
        wrapper, reason = _wrapper_for(mod, NORM_WRAPPERS)
        rule = rules.for_layer(name)
        if wrapper is None or rule['skip']:
            summary.add(name, 'layernorm',
                        reason=reason or 'skipped by override')
            continue
        new = wrapper.from_float(mod)
        new.train(mod.training)
        aq = _input_quantizer(cfg['norm'], rule['a_bits'], name,
                              call_counts.get(name, 1), key='norm')
        new.attach(aq)
        _replace(holders, mod, new)
        summary.add(name, wrapper.kind, act=aq)

    attn = cfg['attn']
    for host_name, host_calls in calls.items():
        roles = attention_sites(host_calls)
        if roles is None:
            for call in host_calls:
                if call.kind in ('matmul', 'sdpa'):
                    summary.add(f'{host_name}.{call.kind}', call.kind,
                                reason='not part of an attention pattern')
            continue
        sites = []
        for k, (call, role) in enumerate(zip(host_calls, roles)):
            op_name = f'{host_name}.{role or call.kind}{k}'
            if role is None:
                summary.add(op_name, call.kind,
                            reason='not part of an attention pattern')
                sites.append(None)
                continue
            rule = rules.for_layer(op_name, host_name)
            if rule['skip']:
                summary.add(op_name, role, reason='skipped by override')
                sites.append(None)
                continue
            bits = attn.get('bits') or rule['a_bits']
            made = {}

            def make(operand, op_name=op_name, rule=rule, bits=bits, made=made):
                if operand == 'softmax':
                    qcfg = attn['softmax']
                    bits = attn.get('softmax_bits') or bits
                elif attn['matmul'] is True:
                    qcfg = rule['act']
                elif isinstance(attn['matmul'], dict):
                    qcfg = attn['matmul']
                else:
                    qcfg = None
                if not qcfg:
                    return None
                made[operand] = _quantizer(qcfg, bits, f'{op_name}.{operand}')
                return made[operand]

            sites.append(build_site(role, make))
            summary.add_attention(op_name, role, made)
        AttentionCallRouter(host_name, [c.kind for c in host_calls],
                           sites).attach_to(model.get_submodule(host_name))
    if any(isinstance(m, PerCallQuantizer) for m in model.modules()) and \
            reset_call_counters not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(reset_call_counters)
    for what in rules.unused():
        print_log(f'mmptq: override {what} matched no layer',
                  logger='current', level=30)
    return summary


def sync_observers(qs: List[BaseQuantizer]) -> None:
    """Merge the observer statistics of all ranks of a distributed run
    (``BaseObserver.sync``), then refresh the parameters of every quantizer
    that has data. Collectives run in the order of ``qs`` (model.modules()
    order), the same on every rank; first a check that all ranks hold the
    same quantizers, so that a mismatch is an error and not a hang."""
    names = '\n'.join(f'{q.name}:{type(q.observer).__name__}' for q in qs)
    digest = int.from_bytes(
        hashlib.sha256(names.encode()).digest()[:7], 'little')
    check = torch.tensor([digest, -digest], dtype=torch.long)
    dist.all_reduce(check, op='max')
    if int(check[0]) != -int(check[1]):
        raise RuntimeError(
            f'distributed calibration: the ranks built different quantizers '
            f'(rank {dist.get_rank()} has {len(qs)}); every rank must '
            f'quantize the same model with the same quant_cfg')
    for q in qs:
        q.observer.sync()
        if q.observer.num_batches > 0:
            q.update_qparams()


class _PassDone(Exception):
    """Ends a forward of a calibration pass that has what it needs."""


class _StopAfter:
    """Forward hooks that end each forward (``_PassDone``) once the given
    quantizers have made as many calls as in the first forward, which runs
    to the end and is counted."""

    def __init__(self, quantizers: Iterable[nn.Module]) -> None:
        self.handles = [q.register_forward_hook(self.count)
                        for q in quantizers]
        self.expected: Optional[int] = None
        self.calls = 0

    def count(self, module: nn.Module, args, output) -> None:
        self.calls += 1
        if self.calls == self.expected:
            raise _PassDone

    def run(self, run: Callable, batch) -> None:
        self.calls = 0
        try:
            run(batch)
        except _PassDone:
            return
        if self.expected is None:
            self.expected = self.calls

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def calibrate(model: nn.Module, batches: Iterable, run: Callable,
              mode: str = 'sequential',
              fixed: Iterable[nn.Module] = (),
              reset: bool = False,
              stop_after: Optional[Iterable[nn.Module]] = None) -> None:
    """Feed the calibration batches with every activation quantizer
    observing, except the ``fixed`` ones (they keep their parameters);
    with ``reset``, the observing ones first forget what they saw.

    ``stop_after`` (quantizers): every forward after the first ends once
    they have made as many calls as in the first (a pass whose statistics
    a transform needs only up to them, before it calibrates everything
    again: ``BaseTransform.first_pass_needs``). The quantizers after them
    may then be left without data; the pass that follows gives it.

    sequential: quantization is on while observing, so every layer sees the
    output of already-quantized layers (RepQ-ViT's order); parallel: the
    observers see the FP signal.

    Distributed (torch.distributed initialised, world size > 1, e.g.
    ``--launcher pytorch``): each rank feeds its shard of the batches, then
    the observers are synchronised (``sync_observers``) and every rank ends
    with the same quantizer parameters. In 'parallel' mode:

    - MinMax observers: exactly those of one process on the union of the
      shards (given bit-equal activations: same threads and kernels);
    - running means of per-batch ranges (MSE, OMSE, PercentileSearch):
      those of one process up to float rounding, when the ranks' batches
      are the single run's batches: batch_size 1 and num_samples a
      multiple of the world size (mmengine's DefaultSampler pads a short
      shard by repeating samples, and with batch_size > 1 groups other
      samples into a batch);
    - EMA observers (EMAMinMax, Percentile): the batch-weighted mean of
      the ranks' states, not the single-process EMA (``EMAMixin.sync``).

    In 'sequential' mode each rank's later layers saw inputs quantized with
    its own running parameters, so only the final synchronisation is
    shared: the result is the same on every rank but not bit-equal to one
    process."""
    qs = find_quantizers(model)
    weights = {
        id(m.weight_quantizer)
        for m in model.modules() if isinstance(m, QuantWeightMixin)
    } | {id(q) for q in fixed}
    for q in qs:
        q.enabled = mode == 'sequential'
        q.observing = id(q) not in weights
        if reset and q.observing:
            q.observer.reset()
    bar = ProgressBar(len(batches)) if hasattr(batches, '__len__') else None
    stop = None if stop_after is None else _StopAfter(stop_after)
    try:
        with torch.no_grad():
            for batch in batches:
                if stop is None:
                    run(batch)
                else:
                    stop.run(run, batch)
                if bar is not None:
                    bar.update()
    finally:
        if stop is not None:
            stop.remove()
    if dist.get_world_size() > 1:
        sync_observers([q for q in qs if q.observing])
    for q in qs:  # statistics are final: later forwards must not move them
        q.enabled = True
        q.observing = False


def freeze(model: nn.Module) -> List[str]:
    """End calibration: observers are dropped, parameters become buffers.
    Returns the quantizers that saw no data: they stay FP (disabled)."""
    unreached = []
    for q in find_quantizers(model):
        q.freeze()
        if not q.enabled:
            unreached.append(q.name)
    return unreached


def quantize_model(
        model: nn.Module,
        quant_cfg: Union[None, dict, QuantConfig],
        calib_data: Iterable,
        stage_callback: Optional[Callable[..., None]] = None,
        work_dir: Optional[str] = None) -> Tuple[nn.Module, QuantSummary]:
    """Quantize ``model`` in place and return it with a per-layer summary.

    Args:
        model: an OpenMMLab model (batches go through ``test_step``) or a
            plain ``nn.Module`` (batches are its inputs).
        quant_cfg: see ``mmptq.core.config.DEFAULT_QUANT_CFG``; every key
            left out takes its default, e.g. ``dict(w_bits=4, a_bits=4)``;
            a :class:`QuantConfig` is used as it is.
        calib_data: calibration batches (a DataLoader, list, ...).
        stage_callback: called as ``stage_callback(name, **kwargs)`` with
            'before_calibration' (ops wrapped, weights calibrated; kwargs
            ``model``) and 'after_calibration' (activation statistics
            collected, after any reconstruction, before freezing; kwargs
            ``model``, ``calib_data``, ``run_batch``, ``summary``); the
            calibration loop passes ``runner.call_hook`` so that hooks see
            the stages.
        work_dir: where ``quant_cfg.reconstruction`` keeps its resume
            state and spilled records (default: a temporary directory).
    """
    cfg = resolve_quant_cfg(quant_cfg)
    if cfg['mixed_precision'] is not None:
        raise ValueError(
            'quant_cfg.mixed_precision asks for a bit allocation, which '
            'quantize_model does not run: write the per-op quant_cfg with '
            '`tools/analyze.py CONFIG --checkpoint CKPT --quant-cfg ... '
            '--sensitivity --budget ...` (mmptq.apis.sensitivity.'
            'allocate_bits) and quantize with that file')
    batches = calib_data if hasattr(calib_data, '__len__') else list(calib_data)
    if len(batches) == 0:
        raise ValueError('calibration data is empty: quantize_model needs at '
                         'least one batch (quant_cfg.calib.num_samples > 0)')
    transforms = [
        build_checked(MODEL_TRANSFORMS, t, f'transforms[{i}]')
        for i, t in enumerate(cfg['transforms'])
    ]
    reconstruction = None if cfg['reconstruction'] is None else build_checked(
        RECONSTRUCTIONS, cfg['reconstruction'], 'reconstruction')
    stage = stage_callback or (lambda name, **kwargs: None)

    model.eval()
    run = run_batch(model)
    first = next(iter(batches))
    if reconstruction is not None:
        reconstruction.check_model(model, first)
    calls, call_counts, first_op = discover(model, first, run)
    mode = cfg['calib']['mode']

    def recalibrate(fixed: List[nn.Module]) -> None:
        print_log(f'mmptq: calibrating again ({len(fixed)} quantizers '
                  f'fixed)', logger='current')
        calibrate(model, batches, run, mode, fixed, reset=True)

    ctx = TransformContext(run_batch=lambda: run(first),
                           recalibrate=recalibrate, batches=batches)
    for transform in transforms:
        transform.before_wrap(model, ctx)
    summary = prepare(model, cfg, calls, call_counts=call_counts,
                      first_op=first_op)
    for transform in transforms:
        transform.before_calibration(model, ctx)
    stage('before_calibration', model=model)
    print_log(f'mmptq: calibrating {len(find_quantizers(model))} quantizers '
              f'on {len(batches)} batches ({mode})', logger='current')
    needs = [transform.first_pass_needs() for transform in transforms]
    stop_after = None if not needs or None in needs else [
        q for quantizers in needs for q in quantizers]
    calibrate(model, batches, run, mode, stop_after=stop_after)
    for transform in transforms:
        transform.after_calibration(model, ctx)
        summary.transforms.extend(transform.rows)
    if reconstruction is not None:
        summary.reconstruction.extend(
            reconstruction.reconstruct(model, batches, run, work_dir))
    stage('after_calibration', model=model, calib_data=batches,
          run_batch=run, summary=summary)
    unreached = freeze(model)
    if unreached:
        print_log(f'mmptq: {len(unreached)} quantizers saw no calibration '
                  f'data and stay FP (more calib samples may reach them): '
                  f'{unreached}', logger='current', level=30)
        summary.mark_unreached(unreached)
    return model, summary
