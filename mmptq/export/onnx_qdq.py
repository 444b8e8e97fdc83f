"""ONNX QDQ export of a frozen mmptq model.

Each quantizer of the model becomes, in the ONNX graph:

- a uniform activation quantizer (per tensor, or per channel along
  ``ch_axis``) with b ≤ 8 bits: ``QuantizeLinear → DequantizeLinear``
  with its scale s and zero point z (uint8 when q_min ≥ 0, else int8).
  ONNX saturates to the full 8-bit range, so for b < 8 a ``Clip`` to the
  float bounds [s·(q_min − z), s·(q_max − z)] comes first. This is exact:
  round(x / s) is monotone in x and the bounds map to q_min − z and
  q_max − z, so round(clip(x) / s) + z = clamp(round(x / s) + z, q_min,
  q_max);
- a uniform weight quantizer (per tensor or per output channel), b ≤ 8:
  the codes q = round(Ŵ / s) + z of the fake-quantized weight Ŵ (so any
  rounding, AdaRound's too) as an int8 / uint8 initializer and
  ``DequantizeLinear`` with s, z and the channel axis: (q − z)·s = Ŵ
  exactly;
- any other quantizer (log√2, Log-Int-Softmax, per-group, b > 8, ...):
  its own forward traced as float ops, the exact float composition of
  its fake quantization, reported as not int8-accelerated;
- a quantizer left disabled by calibration (never reached): nothing.

The graph is traced by the TorchScript exporter (``dynamo=False``): each
QDQ quantizer runs a ``torch.autograd.Function`` whose ``symbolic`` emits
the nodes, named ``<quantizer path>/QuantizeLinear`` etc.
"""
import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from mmptq.nn.modules import QuantWeightMixin
from mmptq.quantizers import (BaseQuantizer, PerCallQuantizer,
                              UniformQuantizer)
from .fold import fold_batchnorm

#: opset of the exported graphs (per-axis QDQ needs ≥ 13, LayerNorm 17)
OPSET = 17
#: the temporary attribute that carries a node's name through the exporter
_NAME_ATTR = 'mmptq_name'


class ExportError(ValueError):
    """A model that cannot be exported as it is."""


@dataclass
class QuantizerExport:
    """How one quantizer is exported.

    Args:
        name: the quantizer's module path in the exported model.
        quantizer: its class name.
        role: 'weight' or 'act'.
        mode: 'qdq' (Q/DQ nodes or a DQ of int8 codes), 'float' (its
            fake quantization as float ops) or 'fp' (disabled: no node).
        bits: bit-width.
        granularity: 'tensor', 'channel' or 'group'.
        reason: why it is not 'qdq'.
        nodes: the ONNX nodes it became.
        dtype: 'int8' or 'uint8', the type of its codes ('qdq').
    """
    name: str
    quantizer: str
    role: str
    mode: str
    bits: int
    granularity: str
    reason: str = ''
    nodes: List[str] = field(default_factory=list)
    dtype: str = ''

    @property
    def accelerated(self) -> bool:
        """Whether ONNX Runtime can run its consumer in int8: a QDQ weight,
        or a per-tensor QDQ activation."""
        return self.mode == 'qdq' and (self.role == 'weight'
                                       or self.granularity == 'tensor')


@dataclass
class ExportSummary:
    """The quantizers of an export and what the graph keeps in Python."""
    path: str
    rows: List[QuantizerExport]
    outputs: List[str]
    in_python: str = ''
    folded_bn: int = 0

    def not_accelerated(self) -> List[QuantizerExport]:
        """The quantizers exported as float ops or per-channel QDQ
        activations: not int8-accelerated."""
        return [r for r in self.rows if r.mode != 'fp' and not r.accelerated]

    def table(self) -> str:
        """One line per mode, then every quantizer not int8-accelerated
        with its ONNX nodes."""
        counts: Dict[str, int] = {}
        for r in self.rows:
            key = f'{r.role} {r.mode}'
            counts[key] = counts.get(key, 0) + 1
        lines = [f'ONNX QDQ export → {self.path}',
                 '  ' + ', '.join(f'{k}: {v}' for k, v in counts.items()) +
                 f'; BatchNorms folded into the weights: {self.folded_bn}']
        slow = self.not_accelerated()
        if slow:
            lines.append(f'  not int8-accelerated ({len(slow)}):')
            lines += [
                f'    {r.name} ({r.quantizer}, {r.bits} bit, {r.mode}'
                f'{": " + r.reason if r.reason else ""}): '
                f'{len(r.nodes)} nodes {r.nodes[:4]}'
                f'{" ..." if len(r.nodes) > 4 else ""}' for r in slow]
        unsigned = [r for r in self.rows
                    if r.role == 'weight' and r.dtype == 'uint8']
        if unsigned:
            lines.append(
                f'  {len(unsigned)} weights are uint8 (asymmetric): ONNX '
                f'Runtime\'s int8 kernels are fastest with int8 weights '
                f'(u8 x s8 dot products): quant_cfg weight.symmetric=True, '
                f'as the w8a8_deploy preset')
        if self.in_python:
            lines.append(f'  in Python: {self.in_python}')
        return '\n'.join(lines)


def _qdq_reason(q: nn.Module) -> str:
    """Why ``q`` cannot be a QDQ pair ('' when it can)."""
    # a subclass that maps values (fake_quant) or applies its parameters
    # (quantize_with: RORQ gathers per-group ones per channel) its own way
    # is not one QDQ pair
    if not isinstance(q, UniformQuantizer) or \
            type(q).fake_quant is not UniformQuantizer.fake_quant or \
            type(q).quantize_with is not UniformQuantizer.quantize_with:
        return 'not uniform'
    if q.granularity == 'group':
        return 'per-group scales'
    if q.quant_min < -128 or q.quant_max > 255 or (
            q.quant_min < 0 and q.quant_max > 127):
        return f'{q.bits} bits do not fit int8 / uint8'
    return ''


def _code_dtype(q: UniformQuantizer) -> torch.dtype:
    return torch.uint8 if q.quant_min >= 0 else torch.int8


def _axis(q: UniformQuantizer) -> Optional[int]:
    return None if q.granularity == 'tensor' else q.ch_axis


@dataclass
class _Spec:
    """What the symbolic functions need (Python values, not traced)."""
    name: str
    scale: np.ndarray  # float32
    zero_point: np.ndarray  # int8 / uint8
    axis: Optional[int]
    clip: Optional[Tuple[float, float]] = None
    fake_quant: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None

    def tensors(self) -> Tuple[Tensor, Tensor]:
        """Fresh (scale, zero_point) tensors: a tensor the tracer saw in
        an earlier call must not enter a Function again."""
        with warnings.catch_warnings():  # constants in the trace: intended
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            return (torch.from_numpy(self.scale.copy()),
                    torch.from_numpy(self.zero_point.copy()))


def _qparams(g, spec: _Spec):
    return tuple(g.op('Constant', value_t=t) for t in spec.tensors())


def _axis_attrs(spec: _Spec) -> dict:
    return {} if spec.axis is None else dict(axis_i=spec.axis)


class _ActQDQ(torch.autograd.Function):
    """x̂ of an activation quantizer; exported as [Clip →] Q → DQ."""

    @staticmethod
    def forward(ctx, x: Tensor, spec: _Spec) -> Tensor:
        scale, zero_point = spec.tensors()
        return spec.fake_quant(x, scale, zero_point.float())

    @staticmethod
    def symbolic(g, x, spec: _Spec):
        scale, zero_point = _qparams(g, spec)
        if spec.clip is not None:
            lo, hi = (g.op('Constant', value_t=torch.tensor(v))
                      for v in spec.clip)
            x = g.op('Clip', x, lo, hi, **{f'{_NAME_ATTR}_s':
                                           f'{spec.name}/Clip'})
        q = g.op('QuantizeLinear', x, scale, zero_point, **_axis_attrs(spec),
                 **{f'{_NAME_ATTR}_s': f'{spec.name}/QuantizeLinear'})
        return g.op('DequantizeLinear', q, scale, zero_point,
                    **_axis_attrs(spec),
                    **{f'{_NAME_ATTR}_s': f'{spec.name}/DequantizeLinear'})


class _FloatMark(torch.autograd.Function):
    """Identity at the input of a quantizer exported as float ops: its
    exporter-given name holds the scope of those ops."""

    @staticmethod
    def forward(ctx, x: Tensor, name: str) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def symbolic(g, x, name: str):
        return g.op('Identity', x, **{f'{_NAME_ATTR}_s': f'{name}/float'})


class _WeightDQ(torch.autograd.Function):
    """Ŵ = (q − z)·s from the integer codes q; exported as DQ(q)."""

    @staticmethod
    def forward(ctx, codes: Tensor, spec: _Spec, shape: Tuple[int, ...]
                ) -> Tensor:
        scale, zp = spec.tensors()
        zp = zp.float()
        if spec.axis is not None:
            view = [1] * len(shape)
            view[spec.axis] = -1
            scale, zp = scale.reshape(view), zp.reshape(view)
        return (codes.float() - zp) * scale

    @staticmethod
    def symbolic(g, codes, spec: _Spec, shape):
        scale, zero_point = _qparams(g, spec)
        return g.op('DequantizeLinear', codes, scale, zero_point,
                    **_axis_attrs(spec),
                    **{f'{_NAME_ATTR}_s': f'{spec.name}/DequantizeLinear'})


def _weights(model: nn.Module) -> Dict[int, Tensor]:
    """id(weight quantizer) → the weight it quantizes."""
    return {id(m.weight_quantizer): m.weight for m in model.modules()
            if isinstance(m, QuantWeightMixin)
            and m.weight_quantizer is not None}


def _quantizers(model: nn.Module) -> Dict[str, nn.Module]:
    """The quantizers of ``model`` by module path: every ``BaseQuantizer``
    (a ``PerCallQuantizer``'s slots one by one) and every other module of
    ``mmptq.quantizers`` that holds one (the Log-Int-Softmax), not their
    inner quantizers."""
    found: Dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if any(name.startswith(p + '.') for p in found):
            continue
        if isinstance(m, BaseQuantizer) or (
                type(m).__module__.startswith('mmptq.quantizers')
                and not isinstance(m, PerCallQuantizer)
                and any(isinstance(c, BaseQuantizer) for c in m.modules())):
            found[name] = m
    return found


def _check_calibrated(quantizers: Dict[str, nn.Module]) -> None:
    missing = [name for name, q in quantizers.items() for m in q.modules()
               if isinstance(m, BaseQuantizer) and m.enabled
               and not m.calibrated]
    if missing:
        raise ExportError(
            f'{len(missing)} quantizers have no scale yet (not calibrated), '
            f'e.g. {missing[:3]}: export a model from quantize_model or a '
            f'quantized checkpoint (tools/quantize.py)')


def _enabled(q: nn.Module) -> bool:
    return any(m.enabled for m in q.modules() if isinstance(m, BaseQuantizer))


def weight_codes(q: UniformQuantizer, weight: Tensor) -> Tensor:
    """q = round(Ŵ / s) + z of the fake-quantized weight Ŵ, checked to give
    Ŵ back exactly as (q − z)·s."""
    with torch.no_grad():
        w_hat = type(q).forward(q, weight.detach()).float()
        scale = q.broadcast(q.scale, w_hat).float()
        zp = q.broadcast(q.zero_point, w_hat).float()
        codes = torch.round(w_hat / scale) + zp
        if not torch.equal((codes - zp) * scale, w_hat):
            raise ExportError(f'{q.name}: the quantized weight is not on its '
                              f'grid (q − z)·s; it cannot be exported as codes')
    return codes.to(_code_dtype(q))


def _spec(name: str, q: UniformQuantizer) -> _Spec:
    dtype = _code_dtype(q)
    # numpy copies: a buffer of the traced model must not enter a Function
    scale = q.scale.detach().float().reshape(-1).numpy()
    zp = q.zero_point.detach().reshape(-1).round().to(dtype).numpy()
    if q.granularity == 'tensor':
        scale, zp = scale.reshape(()), zp.reshape(())
    clip = None
    info = torch.iinfo(dtype)
    if (q.quant_min, q.quant_max) != (info.min, info.max) and \
            q.granularity == 'tensor':
        # float32 products, as x / s sees them
        clip = tuple(float(scale * np.float32(v - int(zp)))
                     for v in (q.quant_min, q.quant_max))
    return _Spec(name, scale, zp, _axis(q), clip)


def plan_export(model: nn.Module) -> List[QuantizerExport]:
    """How each quantizer of ``model`` will be exported (see the module
    docstring). Raises ``ExportError`` for a quantizer without a scale."""
    quantizers = _quantizers(model)
    _check_calibrated(quantizers)
    weights = _weights(model)
    rows = []
    for name, q in quantizers.items():
        role = 'weight' if id(q) in weights else 'act'
        reason = _qdq_reason(q)
        if not _enabled(q):
            mode = 'fp'
        elif reason:
            mode = 'float'
        else:
            mode = 'qdq'
        rows.append(QuantizerExport(
            name=name, quantizer=type(q).__name__, role=role, mode=mode,
            bits=q.bits, granularity=getattr(q, 'granularity', 'tensor'),
            reason=reason if mode == 'float' else '',
            dtype=str(_code_dtype(q)).split('.')[-1] if mode == 'qdq'
            else ''))
    return rows


def _per_channel_clip(q: UniformQuantizer, x: Tensor) -> Tensor:
    """clip(x) to [s·(q_min − z), s·(q_max − z)] per channel (a per-axis
    activation with b < 8 bits: Clip has no axis, so Min / Max)."""
    scale = q.broadcast(q.scale, x)
    zp = q.broadcast(q.zero_point, x)
    return torch.minimum(torch.maximum(x, scale * (q.quant_min - zp)),
                         scale * (q.quant_max - zp))


@contextlib.contextmanager
def qdq_mode(model: nn.Module, rows: Sequence[QuantizerExport]
             ) -> Iterator[None]:
    """Within the context, each 'qdq' quantizer of ``model`` runs a
    function that the TorchScript exporter turns into Q / DQ nodes (its
    weight quantizer returns (q − z)·s of int8 codes held in a buffer
    ``onnx_codes``); the model computes the same values as outside."""
    modules = dict(model.named_modules())
    weights = _weights(model)
    patched = []
    try:
        for row in rows:
            q = modules[row.name]
            if row.mode == 'float':
                q.forward = lambda *a, q=q, name=row.name, **k: type(
                    q).forward(q, _FloatMark.apply(a[0], name), *a[1:], **k)
                patched.append(q)
            if row.mode != 'qdq':
                continue
            spec = _spec(row.name, q)
            if row.role == 'weight':
                weight = weights[id(q)]
                q.register_buffer('onnx_codes', weight_codes(q, weight))
                shape = tuple(weight.shape)

                def forward(x, q=q, spec=spec, shape=shape):
                    return _WeightDQ.apply(q.onnx_codes, spec, shape)
            else:
                spec.fake_quant = lambda x, s, z, q=q: q.quantize_with(
                    x, s, z).to(x.dtype)
                clip = spec.clip is None and spec.axis is not None and \
                    (q.quant_min, q.quant_max) != (
                        np.iinfo(spec.zero_point.dtype).min,
                        np.iinfo(spec.zero_point.dtype).max)

                def forward(x, q=q, spec=spec, clip=clip):
                    if clip:
                        x = _per_channel_clip(q, x)
                    return _ActQDQ.apply(x, spec)
            q.forward = forward
            patched.append(q)
        yield
    finally:
        for q in patched:
            del q.forward
            q._buffers.pop('onnx_codes', None)


class _OpLocator(TorchFunctionMode):
    """Record the innermost module running when a torch function named
    ``op`` is called."""

    def __init__(self, op: str, stack: List[str]) -> None:
        super().__init__()
        self.op, self.stack = op, stack
        self.found: Optional[str] = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.found is None and \
                getattr(func, '__name__', '').lstrip('_') == self.op:
            self.found = self.stack[-1] if self.stack else ''
        return func(*args, **(kwargs or {}))


def locate_op(model: nn.Module, args: tuple, op: str) -> Optional[str]:
    """The module path of the first module whose own forward calls the
    torch function ``op`` (e.g. 'frexp'), or None."""
    names = {m: n for n, m in model.named_modules()}
    stack: List[str] = []

    def pre(mod, inputs):
        stack.append(names.get(mod, type(mod).__name__))

    def post(mod, inputs, out):
        stack.pop()

    handles = [nn.modules.module.register_module_forward_pre_hook(pre),
               nn.modules.module.register_module_forward_hook(
                   post, always_call=True)]
    locator = _OpLocator(op, stack)
    try:
        with torch.no_grad(), locator:
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return locator.found


def _unsupported(model: nn.Module, args: tuple,
                 err: Exception) -> ExportError:
    text = str(err)
    op = next((w.strip("'\".,:") for w in text.split()
               if '::' in w), '')
    where = locate_op(model, args, op.split('::')[-1]) if op else None
    place = f' in {where!r}' if where is not None else ''
    return ExportError(
        f'ONNX export: {op or "an operator"}{place} is not supported by the '
        f'exporter (opset {OPSET}): {text.splitlines()[0]}; keep that module '
        f"in FP (overrides=[dict(name=r'...', skip=True)]) or adapt it")


def _name_nodes(graph: onnx.GraphProto,
                rows: Sequence[QuantizerExport]) -> None:
    """Give the QDQ nodes and the float markers the names carried in their
    temporary attribute, drop it, and list each quantizer's nodes: its Q /
    DQ nodes, or the float nodes the exporter named in the scope of its
    marker (``/a/.../quantizer/...``)."""
    by_name = {r.name: r for r in rows}
    scopes = []
    used: Dict[str, int] = {}
    for node in graph.node:
        keep = [a for a in node.attribute if a.name != _NAME_ATTR]
        if len(keep) == len(node.attribute):
            continue
        name = next(a.s.decode() for a in node.attribute
                    if a.name == _NAME_ATTR)
        if node.op_type == 'Identity':  # a float quantizer's marker
            scopes.append((node.name.rpartition('/')[0] + '/', name))
        calls = used[name] = used.get(name, 0) + 1
        node.name = name if calls == 1 else f'{name}@{calls - 1}'
        del node.attribute[:]
        node.attribute.extend(keep)
        by_name[name.rpartition('/')[0]].nodes.append(node.name)
    for scope, name in scopes:
        row = by_name[name.rpartition('/')[0]]
        row.nodes = list(dict.fromkeys(row.nodes + [
            n.name for n in graph.node if n.name.startswith(scope)]))


def export_qdq(model: nn.Module,
               args: tuple,
               path: str,
               input_names: Sequence[str] = ('input', ),
               output_names: Optional[Sequence[str]] = None,
               dynamic_batch: bool = True,
               quantized: Optional[nn.Module] = None) -> ExportSummary:
    """Export ``model(*args)`` to the ONNX file ``path`` with QDQ nodes for
    its quantizers and check the graph with ``onnx.checker``.

    Args:
        model: a frozen quantized model (or a wrapper around one that
            returns a tensor or a nested tuple of tensors).
        args: example inputs.
        path: the .onnx file to write.
        input_names: names of the graph inputs.
        output_names: names of the flattened outputs (default: output_i).
        dynamic_batch: make dim 0 of inputs and outputs dynamic.
        quantized: the module that holds the quantizers (default:
            ``model``); quantizer names are its module paths.
    """
    quantized = model if quantized is None else quantized
    rows = plan_export(quantized)
    model.eval()
    if output_names is None:
        with torch.no_grad():
            outputs = _flatten(model(*args))
        output_names = ['output'] if len(outputs) == 1 else [
            f'output_{i}' for i in range(len(outputs))]
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {n: {0: 'batch'}
                        for n in list(input_names) + list(output_names)}
    try:
        with qdq_mode(quantized, rows), torch.no_grad():
            torch.onnx.export(model, args, path, dynamo=False,
                              opset_version=OPSET,
                              input_names=list(input_names),
                              output_names=list(output_names),
                              dynamic_axes=dynamic_axes)
    except torch.onnx.errors.UnsupportedOperatorError as err:
        raise _unsupported(model, args, err) from None
    graph = onnx.load(path)
    _name_nodes(graph.graph, rows)
    folded = fold_batchnorm(graph.graph)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, path)
    return ExportSummary(path=path, rows=rows, outputs=list(output_names),
                         folded_bn=folded)


def _flatten(out) -> List[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _flatten(o)]

