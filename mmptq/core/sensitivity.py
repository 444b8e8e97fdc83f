"""Per-op sensitivity: the quantized ops of a calibrated model, weights and
input activations separately, with their MACs in forward order, and the
damage of each op quantized alone (the rest FP).

A model quantized once with every op at the low setting keeps all its
quantizers; switching the ``enabled`` flags of one op's quantizers on and
all others off gives the model with that op alone quantized, without
calibrating again (MQBench's and HAWQ-V3's per-layer sensitivity, measured
directly: noise of the outputs and increase of the task loss)."""
import contextlib
import math
from dataclasses import dataclass, field
from typing import (Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple)

import torch
from mmengine.utils import ProgressBar
from torch import Tensor, nn

from mmptq.nn import QuantMatMul
from mmptq.nn.modules import QuantWeightMixin
from mmptq.quantizers import BaseQuantizer
from .quantize import find_quantizers
from .summary import QuantSummary

#: summary kinds of the attention ops (allocated per attention host)
ATTENTION_KINDS = ('qk', 'softmax', 'av', 'sdpa')


@dataclass
class QuantOp:
    """One quantized op: the weight or the input activation(s) of a layer,
    or the operands of an attention op (q, k / softmax / v).

    ``name`` is the layer or attention op name (as in the summary and the
    ``overrides``), ``kind`` 'weight' or 'act', ``layer_kind`` the summary
    kind ('conv2d', 'linear', 'qk', 'softmax', ...), ``unit`` the name an
    override sets its bits by (the layer; the host of an attention op),
    ``macs`` the multiply-accumulates of its layer per counted forward,
    ``params`` the elements of its weight (weight ops)."""
    name: str
    kind: str
    layer_kind: str
    unit: str
    quantizers: List[BaseQuantizer] = field(repr=False)
    macs: float = 0.0
    params: int = 0
    module: Optional[nn.Module] = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f'{self.name}:{self.kind}'

    @property
    def bits(self) -> int:
        return self.quantizers[0].bits


def _op_of(quantizer_name: str) -> Tuple[str, str]:
    """(op name, 'weight' | 'act') of a quantizer: ``<layer>.weight``,
    ``<layer>.input[@k]``, ``<attention op>.{q,k,v,softmax}``."""
    base, _, leaf = quantizer_name.rpartition('.')
    return base, 'weight' if leaf == 'weight' else 'act'


def _owner(module: nn.Module) -> Optional[str]:
    """The op name of a quantized module, from its quantizers' names."""
    for q in module.modules():
        if isinstance(q, BaseQuantizer):
            return _op_of(q.name)[0]
    return None


def _macs(module: nn.Module, args: tuple, out) -> float:
    """MACs of one call: out.numel() · (weight elements per output
    channel) for Conv / Linear, in.numel() · (weight elements per input
    channel) for a transposed conv, out.numel() · (inner dim) for a
    matmul (its args are (func, a, b))."""
    if isinstance(module, QuantMatMul):
        return float(out.numel() * args[1].shape[-1])
    w = module.weight
    if isinstance(module, nn.ConvTranspose2d):
        return float(args[0].numel() * w.numel() // w.shape[0])
    return float(out.numel() * w.numel() // w.shape[0])


def quant_ops(model: nn.Module, summary: QuantSummary,
              run: Callable[[], object]) -> List[QuantOp]:
    """The enabled quantized ops of ``model`` (quantized, calibrated) in
    the order of their first call in ``run()`` (one forward), with the MACs
    that forward counted (a module run K times counts K calls)."""
    kinds = {row['name']: row['kind'] for row in summary}
    ops: Dict[str, QuantOp] = {}
    for q in find_quantizers(model):
        if not q.enabled:  # not reached by calibration: stays FP
            continue
        name, kind = _op_of(q.name)
        layer_kind = kinds.get(name, '')
        unit = name.rpartition('.')[0] if layer_kind in ATTENTION_KINDS \
            else name
        op = ops.setdefault(f'{name}:{kind}',
                            QuantOp(name, kind, layer_kind, unit, []))
        op.quantizers.append(q)
    order: Dict[str, int] = {}
    macs: Dict[str, float] = {}
    params: Dict[str, int] = {}
    modules: Dict[str, nn.Module] = {}

    def first_call(q, args):
        order.setdefault(_op_of(q.name)[0], len(order))

    def count(module, args, out):
        name = _owner(module)
        macs[name] = macs.get(name, 0.0) + _macs(module, args, out)

    handles = [q.register_forward_pre_hook(first_call)
               for op in ops.values() for q in op.quantizers]
    for m in model.modules():
        if isinstance(m, (QuantWeightMixin, QuantMatMul)) and _owner(m):
            handles.append(m.register_forward_hook(count))
            if isinstance(m, QuantWeightMixin):
                params[_owner(m)] = m.weight.numel()
                modules[_owner(m)] = m
    try:
        with only(ops.values(), ()), torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    for op in ops.values():
        op.macs = macs.get(op.name, 0.0)
        op.params = params.get(op.name, 0) if op.kind == 'weight' else 0
        op.module = modules.get(op.name) if op.kind == 'weight' else None
    return sorted(ops.values(),
                  key=lambda o: (order.get(o.name, math.inf),
                                 o.kind != 'weight'))


@contextlib.contextmanager
def only(ops: Iterable[QuantOp], active: Iterable[QuantOp]) -> Iterator[None]:
    """The quantizers of ``active`` on, those of the other ``ops`` off (FP),
    within the block; the flags are restored on exit."""
    quantizers = [q for op in ops for q in op.quantizers]
    saved = [q.enabled for q in quantizers]
    on = {id(q) for op in active for q in op.quantizers}
    for q in quantizers:
        q.enabled = id(q) in on
    try:
        yield
    finally:
        for q, flag in zip(quantizers, saved):
            q.enabled = flag


def capture_outputs(probes: Sequence[nn.Module]) -> Tuple[List[Tensor],
                                                          List]:
    """Forward hooks on ``probes`` appending every tensor they output
    (nested tuples / lists / dicts flattened) to the returned list; returns
    (list, handles)."""
    got: List[Tensor] = []

    def flatten(x):
        if isinstance(x, Tensor):
            got.append(x.detach())
        elif isinstance(x, (tuple, list)):
            for v in x:
                flatten(v)
        elif isinstance(x, dict):
            for v in x.values():
                flatten(v)

    handles = [p.register_forward_hook(lambda m, a, out: flatten(out))
               for p in probes]
    return got, handles


def op_sensitivity(ops: Sequence[QuantOp],
                   batches: Sequence,
                   forward: Callable[[object], Optional[Tensor]],
                   probes: Sequence[nn.Module],
                   sqnr: Callable[[List[Tensor], List[Tensor]], float],
                   seed: int = 0) -> List[dict]:
    """Damage of each op of ``ops`` quantized alone, the others FP.

    For every op: the noise ratio of the outputs of ``probes`` over
    ``batches`` against FP, averaged over the output tensors t (a small
    output, e.g. a box-regression branch, weighs as much as a large feature
    map): r = mean_t 10^(−SQNR_t/10); r is additive over ops whose noises
    are independent (the allocator's objective); sqnr = −10·log10 r. And,
    when ``forward`` returns a task loss, its increase ΔL = L̂ − L (mean
    over the batches). The random state is reset to ``seed`` before every
    forward (samplers of detection losses draw the same proposals).

    Args:
        ops: from :func:`quant_ops`.
        batches: the evaluation batches.
        forward: runs one batch; returns the task loss (a scalar) or None.
        probes: modules whose outputs are compared with FP.
        sqnr: SQNR (dB) of outputs (a list of tensors) against the FP
            ones.
        seed: random state of every forward.

    Returns:
        dict(key, name, kind, bits, noise, noises (r_t per output tensor,
        in the order the probes produce them), sqnr, loss_increase) per
        op.
    """

    def evaluate():
        outs, losses = [], []
        got, handles = capture_outputs(probes)
        try:
            with torch.no_grad():
                for batch in batches:
                    torch.manual_seed(seed)
                    loss = forward(batch)
                    if loss is not None:
                        losses.append(float(loss))
            outs.extend(got)
        finally:
            for h in handles:
                h.remove()
        return outs, (sum(losses) / len(losses) if losses else None)

    with only(ops, ()):
        ref, ref_loss = evaluate()
    rows = []
    bar = ProgressBar(len(ops))
    for op in ops:
        with only(ops, [op]):
            outs, loss = evaluate()
        noises = [10**(-sqnr([r], [o]) / 10) for r, o in zip(ref, outs)]
        noise = sum(noises) / len(ref)
        rows.append(dict(
            key=op.key, name=op.name, kind=op.kind, bits=op.bits,
            noise=noise, noises=noises, sqnr=math.inf if noise == 0 else
            -10 * math.log10(noise),
            loss_increase=None if loss is None else loss - ref_loss))
        bar.update()
    return rows


def hutchinson_traces(params: Sequence[Tensor],
                      batches: Sequence,
                      loss: Callable[[object], Tensor],
                      num_samples: int = 8,
                      seed: int = 0) -> Tuple[List[float], List[float]]:
    """Hutchinson estimates of the traces of the Hessian blocks H_pp of the
    mean task loss, one per tensor p of ``params`` (HAWQ-V2, Dong et al.,
    NeurIPS 2020, arXiv:1911.03852: Hutchinson's estimator; PyHessian):

        Tr(H_pp) ≈ (1/m) Σ_i v_iᵀ (H v_i)_p,   v_i ~ Rademacher,

    E[vᵀHv] = Σ_jk H_jk E[v_j v_k] = Tr(H); the Hessian-vector product is
    the gradient of gᵀv (double backprop, g = ∇L with a graph). The
    variance of one sample is 2 Σ_{j≠k} H_jk² (0 for a diagonal Hessian:
    exact with one sample); the returned standard errors are the sample
    standard deviations over the m·(batches) estimates / √(that count).

    Args:
        params: tensors that require grad (e.g. the layers' weights).
        batches: the loss's batches; the trace of the mean over batches is
            the mean of the per-batch traces.
        loss: batch → scalar task loss, differentiable twice.
        num_samples: Rademacher vectors m per batch.
        seed: random state of the vectors and of every forward.

    Returns:
        (trace per tensor, standard error per tensor).
    """
    params = list(params)
    gen = torch.Generator().manual_seed(seed)
    samples: List[List[float]] = [[] for _ in params]
    for batch in batches:
        torch.manual_seed(seed)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss(batch), params,
                                        create_graph=True)
            for _ in range(num_samples):
                vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1
                       ).to(p) for p in params]
                hvs = torch.autograd.grad(grads, params, grad_outputs=vs,
                                          retain_graph=True,
                                          allow_unused=True)
                for k, (v, hv) in enumerate(zip(vs, hvs)):
                    samples[k].append(0.0 if hv is None else
                                      float((v * hv).sum()))
    traces, errors = [], []
    for got in samples:
        t = torch.tensor(got, dtype=torch.float64)
        traces.append(float(t.mean()))
        errors.append(float(t.std() / math.sqrt(len(got)))
                      if len(got) > 1 else math.nan)
    return traces, errors


def hessian_sensitivity(ops: Sequence[QuantOp],
                        batches: Sequence,
                        loss: Callable[[object], Tensor],
                        num_samples: int = 8,
                        seed: int = 0) -> Dict[str, dict]:
    """HAWQ-V2's sensitivity of each weight op of ``ops`` (Dong et al.,
    NeurIPS 2020, arXiv:1911.03852, Eq. 2.11):

        Ω = Tr(H)/n · ‖Q(W) − W‖²

    with Tr(H) the Hutchinson estimate (:func:`hutchinson_traces`) of the
    Hessian block of the layer's n weights, taken on the FP model (every
    quantizer of ``ops`` off), and Q the op's weight quantizer. Second
    order, ΔL ≈ ½ ΔWᵀHΔW ≈ Ω/2 when ΔW is spread evenly over the
    Hessian's eigen-directions.

    Args:
        ops: from :func:`quant_ops`; activation ops are skipped.
        batches: the evaluation batches.
        loss: batch → task loss (differentiable twice).
        num_samples: Rademacher vectors per batch.
        seed: random state.

    Returns:
        ``{op.key: dict(trace, trace_err, quant_err, hessian=Ω)}``.
    """
    wops = [op for op in ops if op.kind == 'weight' and op.module is not None]
    weights = [op.module.weight for op in wops]
    saved = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    try:
        with only(ops, ()):
            traces, errors = hutchinson_traces(weights, batches, loss,
                                               num_samples, seed)
        out = {}
        with torch.no_grad():
            for op, w, t, e in zip(wops, weights, traces, errors):
                q = op.module.weight_quantizer
                enabled, q.enabled = q.enabled, True
                try:
                    err = float((q(w) - w).pow(2).sum())
                finally:
                    q.enabled = enabled
                out[op.key] = dict(trace=t, trace_err=e, quant_err=err,
                                   hessian=t / w.numel() * err)
    finally:
        for w, flag in zip(weights, saved):
            w.requires_grad_(flag)
    return out
