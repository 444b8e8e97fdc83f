"""Which modules consume a LayerNorm's output: found by tracing one FP
forward, not by module names, so that the LayerNorm → Linear pairs of
mmdet / mmseg / mmpretrain Swin and ViT backbones (whose naming differs)
are found alike.

During the forward every ``nn.LayerNorm`` output is tagged with the norm's
name; tags follow the tensor through functions that only move or select
elements (view, permute, roll, pad, slicing, ...). A tagged tensor that
enters an ``nn.Linear`` makes that Linear a consumer; a tagged tensor that
enters any other computation (a residual add, a conv, a concat with other
data, ...) is an *other* consumer, which rules the norm out for
transforms that must keep the FP function (RepQ-ViT's reparameterization).
Each Linear input is also checked numerically: its rows (last dim) must be
rows of the norm output, or all-zero rows (padding).
"""
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

#: element-moving functions (by ``__name__``): a per-channel map on the last
#: dim commutes with them as long as the channel order reaches the consumer
REARRANGE = {
    'view', 'reshape', 'permute', 'transpose', 'contiguous', 'flatten',
    'unflatten', 'roll', 'pad', '__getitem__', 'squeeze', 'unsqueeze',
    'movedim', 'chunk', 'split', 'unbind', 'narrow', 'select', 'clone',
    'detach', 'dropout', 'view_as', 'reshape_as', '__get__', 'unfold'
}


@dataclass
class NormUse:
    """How one LayerNorm's output is used in the traced forward."""
    norm: str
    linears: List[str] = field(default_factory=list)
    others: List[str] = field(default_factory=list)  # other consumers
    padded: bool = False  # a consumer saw zero rows (e.g. Swin's padding)
    mismatch: List[str] = field(default_factory=list)  # failed row check

    @property
    def reason(self) -> str:
        """Why a per-channel affine cannot be folded into the consumers
        ('' when it can)."""
        if self.others:
            return f'also feeds {sorted(set(self.others))[:3]}'
        if self.mismatch:
            return f'the input of {self.mismatch[:3]} is not its output rows'
        if not self.linears:
            return 'feeds no Linear'
        return ''


def tensors_in(obj) -> List[Tensor]:
    """The tensors in ``obj`` and its nested lists, tuples and dicts."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_in(o)]
    return []


class TensorTags:
    """tensor → the name it is tagged with (a norm's, a projection's),
    forgotten when the tensor is freed."""

    def __init__(self) -> None:
        self.names: Dict[int, str] = {}

    def add(self, t: Tensor, name: str) -> None:
        key = id(t)
        self.names[key] = name
        weakref.finalize(t, self.names.pop, key, None)

    def get(self, t) -> Optional[str]:
        return self.names.get(id(t)) if isinstance(t, Tensor) else None


def _rows_of(x: Tensor, y: Tensor) -> tuple:
    """(every row of x is a row of y or zero, some row of x is zero), rows
    along the last dim, compared through a random projection."""
    c = y.shape[-1]
    if x.shape[-1] != c:
        return False, False
    g = torch.randn(c, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0)).to(x.device)
    fy = (y.reshape(-1, c).double() @ g).sort().values
    xr = x.reshape(-1, c).double()
    zero = (xr == 0).all(dim=1)
    fx = xr[~zero] @ g
    if fx.numel() == 0:
        return True, bool(zero.any())
    tol = 1e-6 * (fy.abs().max() + 1)
    idx = torch.searchsorted(fy, fx).clamp(max=fy.numel() - 1)
    near = torch.minimum((fy[idx] - fx).abs(),
                         (fy[(idx - 1).clamp(min=0)] - fx).abs())
    return bool((near <= tol).all()), bool(zero.any())


class _TraceMode(TorchFunctionMode):

    def __init__(self, tags: TensorTags, uses: Dict[str, NormUse],
                 stack: List[nn.Module]) -> None:
        super().__init__()
        self.tags, self.uses, self.stack = tags, uses, stack
        self.paused = False  # the tracer's own checks are not the model's

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        tagged: Set[str] = {
            n for n in map(self.tags.get, tensors_in((args, kwargs))) if n}
        if not tagged:
            return out
        outs = tensors_in(out)
        name = getattr(func, '__name__', str(func))
        in_place = name == '__setitem__' or (name.endswith('_')
                                             and not name.startswith('__'))
        if not outs and not in_place:  # metadata: size(), dim(), shape...
            return out
        if name in REARRANGE and len(tagged) == 1 and not in_place:
            norm, = tagged
            for t in outs:
                self.tags.add(t, norm)
            if name == 'pad':
                self.uses[norm].padded = True
            return out
        inside_linear = self.stack and isinstance(self.stack[-1], nn.Linear)
        if name == 'linear' and inside_linear:
            return out  # the consumer the module hook recorded
        for norm in tagged:
            self.uses[norm].others.append(name)
        return out


def trace_norm_uses(model: nn.Module, run: Callable[[], object]
                    ) -> Dict[str, NormUse]:
    """Run ``run()`` once (no grad) and return, per ``nn.LayerNorm`` over
    the last dim with an affine, how its output is used."""
    names = {m: n for n, m in model.named_modules()}
    norms = {m for m in names if isinstance(m, nn.LayerNorm)
             and len(m.normalized_shape) == 1 and m.elementwise_affine}
    tags, stack = TensorTags(), []
    uses = {names[m]: NormUse(names[m]) for m in norms}
    outputs: Dict[str, Tensor] = {}
    mode = _TraceMode(tags, uses, stack)

    def pre(mod, args):
        stack.append(mod)
        if isinstance(mod, nn.Linear) and args:
            norm = tags.get(args[0])
            if norm is not None:
                use = uses[norm]
                if names.get(mod) not in use.linears:
                    use.linears.append(names.get(mod))
                mode.paused = True
                ok, zero = _rows_of(args[0], outputs[norm])
                mode.paused = False
                use.padded |= zero
                if not ok:
                    use.mismatch.append(names.get(mod))

    def post(mod, args, out):
        stack.pop()
        if mod in norms and isinstance(out, Tensor):
            # the latest call's output (a norm may run more than once)
            outputs[names[mod]] = out
            tags.add(out, names[mod])

    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre),
        nn.modules.module.register_module_forward_hook(post, always_call=True)
    ]
    try:
        with torch.no_grad(), mode:
            run()
    finally:
        for h in handles:
            h.remove()
    return {n: u for n, u in uses.items()
            if u.linears or u.others or u.mismatch}
