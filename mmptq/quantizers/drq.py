"""Dual-Region Quantization (DRQ) of PTQ4RIS (Jiang et al., ICRA 2025,
arXiv:2409.17020): post-Softmax and post-GELU activations of the image
encoder, each on two uniform grids, one per region of the value range. It
is the twin-uniform quantizer of PTQ4ViT (Yuan et al., ECCV 2022), which
the PTQ4RIS code reuses (``quant_layers/matmul.py``,
``SoSPTQSLBatchingQuantMatMul``; ``quant_layers/linear.py``,
``PostGeluPTQSLBatchingQuantLinear``).

With b bits, one bit selects the region and each region has
n = 2^(b−1) codes:

- ``region='softmax'`` (x ∈ [0, 1]): R_low = [0, t) with step
  Δ_l = t / (n − 1), R_high = [t, 1] with step Δ_h = 1 / (n − 1); the split
  t = 2^(−k) is searched, so Δ_h / Δ_l = 2^k is a shift;
- ``region='gelu'`` (x ≥ −0.17): R_neg = x < 0 with the fixed step
  Δ_− = 0.16997 / n (GELU's minimum is −0.16997) and codes −n..0,
  R_pos = x ≥ 0 with codes 0..n−1 and the searched step Δ_+.

Each value is quantized on the grid of the region it falls in,
x̂ = Q_low(x) if x < t else Q_high(x) (t = 0 for GELU). The reference adds
the two grids' outputs instead (``quant_input_A``, matmul.py lines
602-605, and the search, lines 621-623): Q_high(clamp(x, t, 1)) +
Q_low(clamp(x, 0, t)). For softmax that adds t to every value ≥ t and
round(t·(n−1))/(n−1) to every value < t (zero only for t < 1/(2(n−1))),
which biases its search to small splits. For GELU (linear.py lines
622-630) the two terms are zero outside their region and the sum equals
the choice.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from mmptq.observers import BaseObserver
from mmptq.registry import OBSERVERS, QUANTIZERS
from .base import BaseQuantizer, round_ste

#: GELU's minimum (at x ≈ −0.7518): the bottom of the negative region
GELU_MIN = 0.16997124254703522
REGIONS = ('softmax', 'gelu')


@OBSERVERS.register_module()
class RegionSearchObserver(BaseObserver):
    """The calibration state of :class:`DualRegionQuantizer`: one row per
    candidate k with lo_k = the mean over batches of the error of candidate
    k and hi_k = the candidate (the split t for softmax, the step Δ_+ for
    GELU; fixed by the first batch). The argmin of the mean error is the
    argmin of the reference's sum over batches. Only DualRegionQuantizer
    feeds it: an update's ``rows`` are one batch's (error, candidate)
    pairs, shape (K, 2)."""

    def batch_range(self, rows: Tensor,
                    quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        return rows[:, 0], rows[:, 1]


def softmax_splits(num: int = 20) -> Tensor:
    """The reference's split candidates t = 2^(−k), k = 0..num−1."""
    return torch.pow(2.0, -torch.arange(num, dtype=torch.float32))


def gelu_steps(top: float, bits: int, alpha: float = 0.01,
               beta: float = 1.2, num: int = 100) -> Tensor:
    """PTQ4ViT's step candidates for the positive region,
    Δ_+ = (α + i·(β − α)/num) · top / (n − 0.5), i = 0..num, n = 2^(b−1),
    ``top`` = max x (``PostGeluPTQSLBatchingQuantLinear._initialize_intervals``
    and ``calibration_step2``)."""
    n = 2**(bits - 1)
    i = torch.arange(num + 1, dtype=torch.float32)
    base = max(float(top), torch.finfo(torch.float32).tiny) / (n - 0.5)
    return (alpha + i * (beta - alpha) / num) * base


@QUANTIZERS.register_module()
class DualRegionQuantizer(BaseQuantizer):
    """Dual-Region Quantization (PTQ4RIS, Jiang et al. 2025, DRQ; PTQ4ViT's
    twin uniform quantization, Yuan et al. 2022): two uniform grids
    with n = 2^(b−1) codes each, one per region (see the module docstring):

        softmax: x̂ = clamp(round(x/Δ_l), 0, n−1)·Δ_l  if x < t,
                 x̂ = clamp(round(x/Δ_h), 0, n−1)·Δ_h  otherwise,
                 Δ_h = 1/(n−1), Δ_l = t/(n−1), t = 2^(−k);
        gelu:    x̂ = clamp(round(x/Δ_−), −n, 0)·Δ_−   if x < 0,
                 x̂ = clamp(round(x/Δ_+), 0, n−1)·Δ_+  otherwise,
                 Δ_− = 0.16997/n.

    Calibration: every batch scores every candidate (t ∈ {2^0..2^−19}, or
    Δ_+ from :func:`gelu_steps` on the first batch's maximum) and
    :class:`RegionSearchObserver` averages the errors over the batches; the
    candidate of the lowest mean error wins. The error: softmax, the mean
    squared error after the matmul with V, mean (Q(p)·V − p·V)², where the
    attention capture passes V (``takes_value``), else mean (Q(p) − p)²;
    gelu, mean (x̂ − x)². The reference scores the layer output with
    PTQ4ViT's Hessian-guided metric, mean (g ⊙ (Ô − O))², g the task
    loss's gradient w.r.t. O, alternating with the weight search (3
    rounds); mmptq's calibration computes no task gradient, and the
    candidates of a post-GELU input are fixed by the first batch's maximum
    (the reference holds all inputs and takes their maximum).

    Buffers: ``scale`` = (Δ_l, Δ_h) or (Δ_−, Δ_+), ``zero_point`` zeros,
    ``split`` = t (0 for gelu).

    Args:
        bits: bit-width b (one region bit and b−1 code bits).
        region: 'softmax' (post-Softmax, x ∈ [0, 1]) or 'gelu'
            (post-GELU).
        observer: only ``dict(type='RegionSearchObserver')`` (the default).
        name: layer name used in messages.
    """

    def __init__(self,
                 bits: int = 8,
                 region: str = 'softmax',
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        observer = observer or dict(type='RegionSearchObserver')
        if observer.get('type') not in ('RegionSearchObserver',
                                        RegionSearchObserver):
            raise ValueError(f'{name or "DualRegionQuantizer"}: observer '
                             f'{observer.get("type")!r}; DRQ searches its '
                             f'region boundary / step itself (leave '
                             f'observer out)')
        if region not in REGIONS:
            raise ValueError(f'{name or "DualRegionQuantizer"}: region='
                             f'{region!r} is not one of {REGIONS}')
        super().__init__(bits=bits, observer=observer, name=name)
        self.region = region
        # the attention capture passes V to a softmax quantizer
        self.takes_value = region == 'softmax'
        self.codes = 2**(bits - 1)
        self.register_buffer('split', torch.zeros(()))

    # -- the math ----------------------------------------------------------
    def steps_for(self, candidate: Tensor) -> Tuple[Tensor, Tensor]:
        """(step of the lower region, step of the upper region) for a split
        t (softmax) or a positive step Δ_+ (gelu)."""
        n = self.codes
        if self.region == 'softmax':
            return candidate / (n - 1), torch.full_like(candidate, 1 / (n - 1))
        return torch.full_like(candidate, GELU_MIN / n), candidate

    def dual_quant(self, x: Tensor, low: Tensor, high: Tensor,
                   split: Tensor) -> Tensor:
        """x̂ with the lower region's step ``low`` below ``split`` and the
        upper region's ``high`` from it on (params broadcast against x)."""
        n = self.codes
        if self.region == 'softmax':
            lower = torch.clamp(round_ste(x / low), 0, n - 1) * low
        else:
            lower = torch.clamp(round_ste(x / low), -n, 0) * low
        upper = torch.clamp(round_ste(x / high), 0, n - 1) * high
        return torch.where(x < split, lower, upper)

    def fake_quant(self, x: Tensor, scale: Tensor,
                   zero_point: Tensor) -> Tensor:
        return self.dual_quant(x, scale[..., 0], scale[..., 1],
                               self.split.to(x.dtype))

    def quantize_with(self, x: Tensor, scale: Tensor,
                      zero_point: Tensor) -> Tensor:
        return self.fake_quant(x, scale, zero_point)

    # -- calibration -------------------------------------------------------
    def candidates(self, x: Tensor) -> Tensor:
        """The candidates of this batch: the observer's (fixed by the first
        batch) once it has seen one."""
        if self.observer.num_batches > 0:
            return self.observer.hi.to(x.device)
        if self.region == 'softmax':
            return softmax_splits().to(x.device)
        return gelu_steps(float(x.max()), self.bits).to(x.device)

    def search(self, x: Tensor, value: Optional[Tensor] = None) -> Tensor:
        """The error of every candidate on one batch, shape (K,)."""
        x = x.detach().float()
        cands = self.candidates(x)
        target = None if value is None else x @ value.detach().float()
        errors = []
        for c in cands:
            low, high = self.steps_for(c)
            split = c if self.region == 'softmax' else torch.zeros_like(c)
            xq = self.dual_quant(x, low, high, split)
            if target is None:
                errors.append((xq - x).pow(2).mean())
            else:
                errors.append((xq @ value.float() - target).pow(2).mean())
        return torch.stack([torch.stack(errors), cands], dim=1)

    def refresh_qparams(self) -> None:
        """The candidate of the lowest mean error."""
        errors, cands = self.observer.range()
        best = cands[int(errors.argmin())]
        low, high = self.steps_for(best)
        self.split = (best if self.region == 'softmax' else
                      torch.zeros_like(best)).reshape(())
        scale = torch.stack([low, high]).float()
        self.set_qparams(scale, torch.zeros_like(scale))

    def forward(self, x: Tensor, value: Optional[Tensor] = None) -> Tensor:
        if self.observing:
            return self.forward_searched(x, self.search(x, value))
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', region={self.region}'

    def describe(self) -> dict:
        return dict(super().describe(), region=self.region)
