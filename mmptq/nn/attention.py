"""Attention capture: quantize Q·Kᵀ, the softmax output and attn·V inside
any attention implementation, without a per-model forward.

Discovery runs one FP forward under a ``TorchFunctionMode`` that records,
for the innermost module running, every matmul / softmax /
``scaled_dot_product_attention`` call. A module is an *attention host* when
it calls SDPA, or calls a matmul with output shape S, then a softmax over a
tensor of shape S, then a matmul whose left operand has shape S. Each host
gets an ``AttentionCallRouter`` that, while the host runs, intercepts those
calls in order (call k → site k) and routes them to quantized sites; while
a child of the host runs (its ``qkv``, a module of its own with matmuls),
the interception is off, as discovery gave those calls to the child.

A softmax quantizer with ``takes_value`` (PTQ4SAM's AGQ) calibrates on the
error after the matmul with V, so it is applied where the probabilities
meet V: the softmax call returns them in FP, and the next matmul whose
left operand has the softmax's output shape (as ``attention_sites`` pairs
them) gets its left operand quantized by it, called with
``value=`` its right operand (in SDPA: ``ProbsValueMatMul``).
"""
from dataclasses import dataclass, field
from typing import Callable, Collection, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .modules import QuantMatMul, QuantSDPA, QuantSoftmax
from .own_forward import WEIGHTED_FUNCS, call_operands

MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
           torch.bmm, torch.Tensor.bmm}
SOFTMAXES = {F.softmax, torch.softmax, torch.Tensor.softmax}
SDPAS = {F.scaled_dot_product_attention}
#: modules that only apply a softmax: their call belongs to the parent
TRANSPARENT = (nn.Softmax, nn.Softmax2d, nn.Dropout)


def _kind(func: Callable) -> Optional[str]:
    if func in MATMULS:
        return 'matmul'
    if func in SOFTMAXES:
        return 'softmax'
    if func in SDPAS:
        return 'sdpa'
    return None


@dataclass
class Call:
    kind: str
    shapes: Tuple[Tuple[int, ...], ...]  # operand shapes
    out_shape: Tuple[int, ...]
    #: weighted functional ops (``own_forward.WEIGHTED_FUNCS``, recorded
    #: for the ``weighted`` modules only): 'own' when the weight was the
    #: module's ``weight``, else 'other'; '' for attention calls
    weight: str = ''


@dataclass
class HostRecord:
    """The calls one module made in its first forward."""
    calls: List[Call] = field(default_factory=list)
    done: bool = False


class _RecordMode(TorchFunctionMode):

    def __init__(self, stack: List[nn.Module],
                 records: Dict[nn.Module, HostRecord],
                 weighted: Collection[nn.Module] = ()) -> None:
        super().__init__()
        self.stack, self.records = stack, records
        self.weighted = weighted

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in WEIGHTED_FUNCS and self.stack and \
                self.stack[-1] in self.weighted:
            self._record_weighted(func, args, kwargs or {}, out)
            return out
        kind = _kind(func)
        owner = next((m for m in reversed(self.stack)
                      if not isinstance(m, TRANSPARENT)), None)
        if kind is None or owner is None:
            return out
        record = self.records.setdefault(owner, HostRecord())
        if not record.done:
            shapes = tuple(
                tuple(a.shape) for a in args if isinstance(a, Tensor))
            record.calls.append(Call(kind, shapes, tuple(out.shape)))
        return out

    def _record_weighted(self, func, args, kwargs, out) -> None:
        """A call of a functional weighted op by the innermost running
        module, one of ``weighted``: with its own weight or not."""
        owner = self.stack[-1]
        record = self.records.setdefault(owner, HostRecord())
        if record.done:
            return
        x, w = call_operands(args, kwargs)
        shapes = tuple(tuple(t.shape) for t in (x, w)
                       if isinstance(t, Tensor))
        own = w is not None and w is getattr(owner, 'weight', None)
        record.calls.append(
            Call(WEIGHTED_FUNCS[func], shapes,
                 tuple(out.shape) if isinstance(out, Tensor) else (),
                 'own' if own else 'other'))


def record_calls(model: nn.Module, run: Callable[[], object],
                 counts: Optional[Dict[str, int]] = None,
                 weighted: Collection[nn.Module] = ()
                 ) -> Dict[str, List[Call]]:
    """Run ``run()`` once and return, per module name, the matmul / softmax
    / SDPA calls made directly by that module in its first forward. With
    ``counts``, also fill it with the number of forwards of every module
    during the run. For the modules in ``weighted`` (Conv / Linear
    subclasses with their own forward), also the calls of functional
    weighted ops (``F.conv2d``, ``F.linear``, ...) they made while they
    were the innermost running module, with whether the weight was their
    own ``weight`` (``Call.weight``)."""
    stack: List[nn.Module] = []
    records: Dict[nn.Module, HostRecord] = {}
    names = {m: n for n, m in model.named_modules()}

    def pre(mod, args):
        stack.append(mod)
        if counts is not None and mod in names:
            counts[names[mod]] = counts.get(names[mod], 0) + 1

    def post(mod, args, out):
        stack.pop()
        if mod in records:
            records[mod].done = True

    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre),
        nn.modules.module.register_module_forward_hook(post, always_call=True)
    ]
    try:
        with torch.no_grad(), _RecordMode(stack, records, set(weighted)):
            run()
    finally:
        for h in handles:
            h.remove()
    return {names[m]: r.calls for m, r in records.items() if m in names}


def attention_sites(calls: List[Call]) -> Optional[List[Optional[str]]]:
    """Role of each call of a host ('qk', 'softmax', 'av', 'sdpa' or None
    for a call that is not part of an attention pattern), or None when the
    calls hold no attention pattern."""
    roles: List[Optional[str]] = [None] * len(calls)
    found = False
    for i, call in enumerate(calls):
        if call.kind == 'sdpa':
            roles[i], found = 'sdpa', True
            continue
        if call.kind != 'softmax':
            continue
        shape = call.shapes[0] if call.shapes else call.out_shape
        qk = next((j for j in range(i - 1, -1, -1)
                   if calls[j].kind == 'matmul' and roles[j] is None
                   and calls[j].out_shape == shape), None)
        av = next((j for j in range(i + 1, len(calls))
                   if calls[j].kind == 'matmul' and roles[j] is None
                   and calls[j].shapes and calls[j].shapes[0] == shape), None)
        if qk is None or av is None:
            continue
        roles[qk], roles[i], roles[av] = 'qk', 'softmax', 'av'
        found = True
    return roles if found else None


class _CaptureMode(TorchFunctionMode):

    def __init__(self, owner: 'AttentionCallRouter') -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func)
        if kind is None:
            return func(*args, **kwargs)
        return self.owner.dispatch(kind, func, args, kwargs)


class AttentionCallRouter(nn.Module):
    """Quantized call sites of one attention host, in call order.

    ``sites[k]`` serves the k-th matmul / softmax / SDPA call of the host's
    forward; a call outside the attention pattern has an FP site (None).
    """

    def __init__(self, host_name: str, kinds: List[str],
                 sites: List[Optional[nn.Module]]) -> None:
        super().__init__()
        self.host_name = host_name
        self.kinds = list(kinds)
        self.sites = nn.ModuleList(
            [s if s is not None else nn.Identity() for s in sites])
        self.active = [s is not None for s in sites]
        self._index = 0
        self._mode: Optional[_CaptureMode] = None
        #: (quantizer, output shape) of softmax calls waiting for their V
        self._pending: List[Tuple[nn.Module, Tuple[int, ...]]] = []
        #: per running child: whether ``pause`` took the capture off
        self._paused: List[bool] = []
        #: per child: whether it holds an attention host of its own
        self._holds_host: Dict[nn.Module, bool] = {}

    def dispatch(self, kind: str, func: Callable, args, kwargs):
        k = self._index
        self._index += 1
        if k >= len(self.kinds) or self.kinds[k] != kind:
            expected = self.kinds[k] if k < len(self.kinds) else 'nothing'
            raise RuntimeError(
                f'attention capture of {self.host_name!r}: call #{k} is a '
                f'{kind}, but the discovery pass saw {expected}; its forward '
                f'changes with the input. Keep it in FP with '
                f"overrides=[dict(name=r'{self.host_name}', skip=True)] or "
                f'add an adapter in mmptq/nn/adapters.py')
        if kind == 'matmul' and self._pending:
            args = self._probs_quantized(args)
        if not self.active[k]:
            return func(*args, **kwargs)
        site = self.sites[k]
        if kind == 'softmax' and takes_value(site.quantizer):
            out = func(*args, **kwargs)
            self._pending.append((site.quantizer, tuple(out.shape)))
            return out
        return site(func, *args, **kwargs)

    def _probs_quantized(self, args: tuple) -> tuple:
        """A matmul's operands, the left one quantized by the waiting
        softmax quantizer of its shape, if any."""
        if len(args) < 2:
            return args
        a, b = args[0], args[1]
        for i, (quantizer, shape) in enumerate(self._pending):
            if tuple(a.shape) == shape:
                del self._pending[i]
                return (quantizer(a, value=b), b, *args[2:])
        return args

    def enter(self, module: nn.Module, args) -> None:
        self._index = 0
        self._pending = []
        self._paused = []
        self._mode = _CaptureMode(self)
        self._mode.__enter__()

    def exit(self, module: nn.Module, args, output) -> None:
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(None, None, None)

    def pause(self, child: nn.Module, args) -> None:
        """A child of the host starts: its calls are its own (discovery
        gives them to the innermost module), so the capture is taken off
        while it runs; this also spares the interception of every op of
        its forward (the quantizers of ``qkv`` / ``proj``). A child that
        holds an attention host keeps the capture: its own router's mode
        goes on top of it."""
        holds = self._holds_host.get(child)
        if holds is None:
            holds = self._holds_host[child] = any(
                isinstance(m, AttentionCallRouter) for m in child.modules())
        mode = self._mode
        off = (mode is not None and not holds and
               torch.overrides._get_current_function_mode() is mode)
        self._paused.append(off)
        if off:
            mode.__exit__(None, None, None)

    def resume(self, child: nn.Module, args, output) -> None:
        if self._paused and self._paused.pop():
            self._mode.__enter__()

    def attach_to(self, host: nn.Module) -> None:
        host.add_module('attn_quantizer', self)
        host.register_forward_pre_hook(self.enter)
        host.register_forward_hook(self.exit, always_call=True)
        for child in host.children():
            if child is not self and not isinstance(child, TRANSPARENT):
                child.register_forward_pre_hook(self.pause)
                child.register_forward_hook(self.resume, always_call=True)


def takes_value(quantizer: Optional[nn.Module]) -> bool:
    """Whether a softmax quantizer is applied with the V of its matmul."""
    return bool(getattr(quantizer, 'takes_value', False))


def build_site(role: str, make: Callable[[str], Optional[nn.Module]]
               ) -> nn.Module:
    """Quantized site for a role; ``make(operand)`` builds the quantizer of
    an operand ('q', 'k', 'softmax', 'v') or returns None to keep it FP.
    In attn·V the left operand is the softmax output, quantized already."""
    if role == 'qk':
        return QuantMatMul(make('q'), make('k'))
    if role == 'softmax':
        return QuantSoftmax(make('softmax'))
    if role == 'av':
        return QuantMatMul(None, make('v'))
    qk, softmax, av = (build_site(r, make) for r in ('qk', 'softmax', 'av'))
    if takes_value(softmax.quantizer):
        softmax, av = QuantSoftmax(None), ProbsValueMatMul(
            softmax.quantizer, av.quantizer_b)
    return QuantSDPA(qk, softmax, av)


class ProbsValueMatMul(QuantMatMul):
    """attn·V inside SDPA for a ``takes_value`` softmax quantizer Q_p:
    out = f(Q_p(a, value=b), Q_v(b))."""

    def __init__(self, quantizer_p: nn.Module,
                 quantizer_b: Optional[nn.Module]) -> None:
        super().__init__(None, quantizer_b)
        self.quantizer_p = quantizer_p

    def forward(self, func: Callable, a: Tensor, b: Tensor, *args,
                **kwargs) -> Tensor:
        return super().forward(func, self.quantizer_p(a, value=b), b, *args,
                               **kwargs)
