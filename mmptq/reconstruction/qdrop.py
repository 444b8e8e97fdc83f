"""QDrop (Wei et al., ICLR 2022, "QDrop: Randomly Dropping Quantization
for Extremely Low-bit Post-Training Quantization"): while a block is
reconstructed, each activation element keeps its FP value with
probability p (Eq. 8: x̂ ← x where u < p, u ~ U[0, 1)), and the block
input mixes quantized-model and FP-model inputs the same way. Rounding
and activation steps are learned jointly. The drop exists only inside the
fit (:meth:`QDropReconstruction.fitting`): evaluation never drops (the
PTQ4SAM reference leaves it on at test time)."""
import contextlib
from typing import Iterator, List

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from mmptq.registry import RECONSTRUCTIONS
from .block import BlockReconstruction


def mix_inputs(q, fp, prob: float, gen: torch.Generator):
    """QDrop's input: each element of the quantized-model input replaced by
    its FP-model value with probability ``prob``."""
    if fp is None or prob <= 0:
        return q
    q_leaves, spec = tree_flatten(q)
    fp_leaves = tree_flatten(fp)[0]
    out = []
    for a, b in zip(q_leaves, fp_leaves):
        if isinstance(a, Tensor) and a.is_floating_point():
            mask = torch.rand(a.shape, generator=gen) < prob
            a = torch.where(mask.to(a.device), b, a)
        out.append(a)
    return tree_unflatten(out, spec)


@contextlib.contextmanager
def activation_drop(quantizers: List[nn.Module],
                    prob: float) -> Iterator[None]:
    """Within the block, every enabled quantizer of ``quantizers`` returns
    its FP input instead of the quantized value for each element with
    probability ``prob`` (a forward hook; removed on exit)."""

    def drop(module: nn.Module, args, out: Tensor) -> Tensor:
        if not module.enabled:
            return out
        x = args[0]
        return torch.where(torch.rand_like(x) < prob, x, out)

    handles = [q.register_forward_hook(drop) for q in quantizers] \
        if prob > 0 else []
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@RECONSTRUCTIONS.register_module()
class QDropReconstruction(BlockReconstruction):
    """QDrop: rounding and activation steps learned jointly, activations
    randomly kept FP with ``drop_prob`` (default 0.5) while fitting."""
    DEFAULTS = dict(phases=('joint', ), drop_prob=0.5)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= self.cfg['drop_prob'] < 1.0:
            raise ValueError(f'drop_prob={self.cfg["drop_prob"]} must be in '
                             f'[0, 1)')

    def mix_inputs(self, q, fp, gen: torch.Generator):
        return mix_inputs(q, fp, self.cfg['drop_prob'], gen)

    def fitting(self, act_quantizers: List[nn.Module]):
        return activation_drop(act_quantizers, self.cfg['drop_prob'])
