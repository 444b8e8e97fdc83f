"""Hybrid Log-Uniform Quantization (HLUQ) of AHCPTQ (Zhang et al., ICCV
2025, arXiv:2503.03088): the post-GELU activations (the input of the MLP's
second Linear), dense near their minimum and with a sparse long
tail. A log2 grid covers the dense part, a uniform grid the tail, in one
code space of 2^b codes.

With m the range's minimum (the offset), u = x − m ≥ 0, a split s_l (the
top of the log grid), L log levels and U = 2^b − 1 − L uniform levels:

    code 0:             û = 0                       (the dead zone)
    codes 1..L:         û = s_l·2^(−q),  q = 0..L−1  (log2)
    codes L+1..2^b−1:   û = s_l + k·s_u, k = 1..U    (uniform)

and x̂ = m + û, where

    u ≤ s_l:  q = round(−log2(u/s_l)) ≥ 0; û = s_l·2^(−q) if q < L,
              else 0 (the dead zone, u < s_l·2^(−(L − 1/2)); also u ≤ 0);
    u > s_l:  k = clamp(round((u − s_l)/s_u), 0, U), û = s_l + k·s_u
              (k = 0 is the log grid's top level s_l).

The grid ends at the range's top: s_u = (R − s_l)/U, R = hi − m.
Calibration picks (s_l, L) from candidates s_l = r·R, r ∈ ``split_ratios``
(the reference's range rates 0.1, 0.3, 0.5) and L = round(f·2^b),
f ∈ ``log_fractions`` (its grid rates 1/8, 1/4, 1/2), by the output error
of the layer that reads the activation, mean |(x̂ − x)·Wᵀ|^p (p = 2), with
the FP weight W: each batch scores every candidate with the running range
and the scores are averaged over the batches; [m, hi] is the mean of the
per-batch min / max (the reference's ``HybridParamObserver``).

The reference (Keio-CSG/AHCPTQ, ``fake_hybrid_quantize_per_tensor_affine``,
``HybridQuantize``) counts its codes as L log levels plus 2^b − L uniform
levels k = 0..2^b − L − 1 with s_u = R(1 − r)/((2^b − 1)(1 − f)): its
uniform k = 0 repeats the log grid's s_l and the dead zone's 0 is one more
value, so its 2^b distinct values need 2^b + 1 codes, and its top level
falls short of the range's maximum (by 2 % of R(1 − r) at 4 bits, f = 1/4).
Here the dead zone is code 0, the uniform grid starts one step above s_l
and ends at the maximum: 2^b codes for 2^b values. The reference learns
s_l and s_u in its reconstruction; mmptq's reconstruction learns only
uniform steps, so they stay as calibrated.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmptq.registry import QUANTIZERS
from .base import BaseQuantizer, round_ste
from .drq import RegionSearchObserver


def hybrid_quant(x: Tensor, offset: Tensor, s_log: Tensor, s_uni: Tensor,
                 log_levels: int, uni_levels: int) -> Tensor:
    """HLUQ's fake quantization x̂ = m + û (AHCPTQ's HLUQ; the module
    docstring), with straight-through rounding.

    Args:
        x: the input.
        offset: m, the grid's origin (broadcastable to x).
        s_log: s_l, the top of the log grid.
        s_uni: s_u, the uniform step above s_l.
        log_levels: L, the number of log levels.
        uni_levels: U, the number of uniform levels above s_l.

    Returns:
        x̂, the shape of x.
    """
    u = x - offset
    tiny = torch.finfo(u.dtype).tiny
    q = round_ste(-torch.log2((u / s_log).clamp(min=tiny)))
    dead = (q >= log_levels) | (u <= 0)
    log_val = s_log * torch.pow(2.0, -q.clamp(0, log_levels - 1))
    log_val = torch.where(dead, torch.zeros_like(log_val), log_val)
    k = torch.clamp(round_ste((u - s_log) / s_uni), 0, uni_levels)
    uni_val = s_log + k * s_uni
    return offset + torch.where(u <= s_log, log_val, uni_val)


@QUANTIZERS.register_module()
class HLUQuantizer(BaseQuantizer):
    """Hybrid Log-Uniform Quantization (HLUQ; AHCPTQ, Zhang et al. 2025),
    per tensor: a log2 grid of L levels below the split s_l, a
    uniform grid of 2^b − 1 − L levels from s_l to the range's top, and
    the dead zone, offset to the range's minimum m (see the module
    docstring and :func:`hybrid_quant`).

    Calibration searches (s_l, L) over ``split_ratios`` × ``log_fractions``
    by the output error of the layer that reads the activation (the
    consumer, bound by ``bind_consumer`` when mmptq wraps the layer), or
    by mean |x̂ − x|^p where there is none.

    Buffers: ``scale`` = (s_l, s_u), ``zero_point`` = (m, ) (the offset),
    ``log_levels`` = L.

    Args:
        bits: bit-width b, 2^b codes.
        split_ratios: the candidate r of s_l = r·(hi − m), each in (0, 1).
        log_fractions: the candidate f of L = round(f·2^b), each in (0, 1)
            (L clamped to [1, 2^b − 2]).
        p: the exponent of the calibration error.
        observer: only ``dict(type='RegionSearchObserver')`` (the default):
            it keeps the mean range and the mean error per candidate.
        name: layer name used in messages.
    """

    def __init__(self,
                 bits: int = 4,
                 split_ratios: Sequence[float] = (0.1, 0.3, 0.5),
                 log_fractions: Sequence[float] = (1 / 8, 1 / 4, 1 / 2),
                 p: float = 2.0,
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        who = name or 'HLUQuantizer'
        observer = observer or dict(type='RegionSearchObserver')
        if observer.get('type') not in ('RegionSearchObserver',
                                        RegionSearchObserver):
            raise ValueError(f'{who}: observer {observer.get("type")!r}; '
                             f'HLUQ searches its split itself (leave '
                             f'observer out)')
        for key, values in (('split_ratios', split_ratios),
                            ('log_fractions', log_fractions)):
            if not values or any(not 0 < float(v) < 1 for v in values):
                raise ValueError(f'{who}: {key}={values!r} must be a '
                                 f'non-empty list of numbers in (0, 1)')
        super().__init__(bits=bits, observer=observer, name=name)
        if bits < 3:
            raise ValueError(f'{who}: bits={bits}: HLUQ needs b >= 3 (the '
                             f'dead zone, a log and a uniform level); use '
                             f'UniformQuantizer below that')
        self.split_ratios = tuple(float(r) for r in split_ratios)
        self.log_fractions = tuple(float(f) for f in log_fractions)
        self.p = p
        self.candidates: List[Tuple[float, int]] = [
            (r, L) for r in self.split_ratios
            for L in sorted({self.levels_for(f) for f in self.log_fractions})
        ]
        self.register_buffer('log_levels', torch.zeros((), dtype=torch.long))
        self._consumer: Optional[nn.Module] = None

    def levels_for(self, fraction: float) -> int:
        """L = round(f·2^b), clamped to [1, 2^b − 2]."""
        return min(max(int(round(fraction * 2**self.bits)), 1),
                   2**self.bits - 2)

    # -- the consumer (output error) ---------------------------------------
    def bind_consumer(self, layer: nn.Module) -> None:
        """Score calibration candidates by the output error of ``layer``
        (a wrapped op with ``op(x, weight)``). Kept out of the module tree
        (no state-dict entries), dropped by ``freeze``."""
        object.__setattr__(self, '_consumer', layer)

    def output_error(self, xq: Tensor, x: Tensor) -> Tensor:
        """mean |f(x̂) − f(x)|^p, f the consumer's op with its FP weight (its
        bias cancels), or f = identity without one."""
        layer = self.__dict__.get('_consumer')
        diff = xq - x
        if layer is not None and hasattr(layer, 'op'):
            weight = layer.weight.detach().float()
            diff = layer.op(xq, weight) - layer.op(x, weight)
        return diff.abs().pow(self.p).mean()

    # -- the math ----------------------------------------------------------
    def grid(self, lo: Tensor, hi: Tensor, ratio: float,
             levels: int) -> Tuple[Tensor, Tensor, int]:
        """(s_l, s_u, U) of the candidate (r, L) on the range [lo, hi]."""
        span = (hi - lo).clamp(min=torch.finfo(torch.float32).tiny)
        uni = 2**self.bits - 1 - levels
        s_log = span * ratio
        return s_log, (span - s_log) / uni, uni

    def fake_quant(self, x: Tensor, scale: Tensor,
                   zero_point: Tensor) -> Tensor:
        levels = int(self.log_levels)
        return hybrid_quant(x, zero_point[..., 0].to(x.dtype),
                            scale[..., 0].to(x.dtype),
                            scale[..., 1].to(x.dtype), levels,
                            2**self.bits - 1 - levels)

    def quantize_with(self, x: Tensor, scale: Tensor,
                      zero_point: Tensor) -> Tensor:
        return self.fake_quant(x, scale, zero_point)

    # -- calibration -------------------------------------------------------
    def search(self, x: Tensor) -> Tensor:
        """One batch: rows (1 + K, 2), row 0 = (min, max) of the batch,
        row 1 + k = (error of candidate k on the running range, k)."""
        x = x.detach().float()
        lo, hi = x.min(), x.max()
        n = int(self.observer.num_batches)
        if n:  # the running mean after this batch, as the reference
            lo = self.observer.lo[0] + (lo - self.observer.lo[0]) / (n + 1)
            hi = self.observer.hi[0] + (hi - self.observer.hi[0]) / (n + 1)
        rows = [torch.stack([x.min(), x.max()])]
        with torch.no_grad():
            for k, (ratio, levels) in enumerate(self.candidates):
                s_log, s_uni, uni = self.grid(lo, hi, ratio, levels)
                xq = hybrid_quant(x, lo, s_log, s_uni, levels, uni)
                rows.append(torch.stack([self.output_error(xq, x),
                                         torch.tensor(float(k),
                                                      device=x.device)]))
        return torch.stack(rows)

    def refresh_qparams(self) -> None:
        """The candidate of the lowest mean error on the mean range."""
        first, second = self.observer.range()
        lo, hi, errors = first[0], second[0], first[1:]
        ratio, levels = self.candidates[int(errors.argmin())]
        s_log, s_uni, _ = self.grid(lo, hi, ratio, levels)
        self.log_levels = torch.tensor(levels, device=lo.device)
        self.set_qparams(torch.stack([s_log, s_uni]).float(),
                         lo.reshape(1).float())

    @property
    def split(self) -> float:
        """s_l, the top of the log grid (above the offset)."""
        return float(self.scale[0]) if self.calibrated else math.nan

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            return self.forward_searched(x, self.search(x))
        return super().forward(x)

    def freeze(self) -> None:
        object.__setattr__(self, '_consumer', None)
        super().freeze()

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', log_levels={int(self.log_levels)}'
                f', split_ratios={self.split_ratios}')

    def describe(self) -> dict:
        return dict(super().describe(), log_levels=int(self.log_levels))
