"""Logarithmic quantizers for post-Softmax activations."""
import math
from functools import lru_cache
from typing import Tuple

import torch
from torch import Tensor

from mmptq.registry import QUANTIZERS
from .base import BaseQuantizer, log_levels, round_ste


@lru_cache(maxsize=None)
def level_table(bits: int, root: int, dtype: torch.dtype,
                device: torch.device) -> Tensor:
    """The levels 2^(-q/root), q = 0..2^b-1, then 0 for the codes past the
    range (computed in float64, cast once per dtype and device; read-only:
    callers index it)."""
    table = torch.cat([log_levels(bits, root),
                       torch.zeros(1, dtype=torch.float64)])
    return table.to(dtype=dtype, device=device)


class LogQuantizer(BaseQuantizer):
    """Log quantizer with base 2^(1/τ) for non-negative inputs x ≤ s.

    q = clamp(round(−τ·log2(x / s)), 0, 2^b − 1),   x̂ = s · 2^(−q/τ),
    and x̂ = 0 where round(−τ·log2(x / s)) ≥ 2^b (below the smallest level).
    The scale is the top of the clip range: s = hi. Subclasses fix τ.
    """

    root = 1

    def qparams_from_range(self, lo: Tensor,
                           hi: Tensor) -> Tuple[Tensor, Tensor]:
        scale = hi.clamp(min=torch.finfo(torch.float32).tiny)
        return scale, torch.zeros_like(scale)

    def fake_quant(self, x: Tensor, scale: Tensor,
                   zero_point: Tensor) -> Tensor:
        levels = 2**self.bits
        ratio = x / scale
        tiny = torch.finfo(ratio.dtype).tiny  # exact for all normal ratios
        if not (x.requires_grad or scale.requires_grad) and (
                levels <= -self.root * math.log2(tiny)):
            # the same values in fewer passes: x/s ≤ 0 gives log2 → −inf,
            # q → +inf, clamped to the extra zero level 2^b; so does any
            # 0 < x/s < tiny, whose q exceeds −τ·log2(tiny) ≥ 2^b
            q = ratio.clamp_(min=0).log2_().mul_(-self.root).round_()
            table = level_table(self.bits, self.root, x.dtype, x.device)
            # index_select over the flat codes: ~3x faster than table[q]
            codes = q.clamp_(0, levels).long().flatten()
            return table.index_select(0, codes).view_as(x).mul_(scale)
        q = round_ste(-self.root * torch.log2(ratio.clamp(min=tiny)))
        # x ≤ 0 is below every level (−log2 → +inf), also for large b
        keep = ((q < levels) & (ratio > 0)).to(x.dtype)
        q = q.clamp(0, levels - 1)
        # exact levels from a table; the straight-through path for learning
        table = log_levels(self.bits, self.root).to(x)
        value = table[q.detach().long()]
        if x.requires_grad or scale.requires_grad:
            ste = torch.pow(2.0, -q / self.root)
            value = value + (ste - ste.detach())
        return scale * value * keep

    def extra_repr(self) -> str:
        return super().extra_repr() + f', base=2^(1/{self.root})'


@QUANTIZERS.register_module()
class Log2Quantizer(LogQuantizer):
    """Log2 quantizer (τ = 1): x̂ = s · 2^(−q), q = clamp(round(−log2(x/s)),
    0, 2^b−1), zero below the range (Miyashita et al. 2016; FQ-ViT's LIS)."""

    root = 1


@QUANTIZERS.register_module()
class LogSqrt2Quantizer(LogQuantizer):
    """Log√2 quantizer of RepQ-ViT (Li et al. 2023, Eq. 10-11), τ = 2:
    q = clamp(round(−2·log2(x/s)), 0, 2^b−1),
    x̂ = s · 2^(−⌈q/2⌉) · (1 + (√2−1)·(q mod 2)) = s · 2^(−q/2);
    zero below the range."""

    root = 2
