"""Adaptive Granularity Quantization of post-Softmax attention (PTQ4SAM)."""
from typing import Optional, Sequence, Tuple

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from mmptq.observers import BaseObserver
from mmptq.registry import OBSERVERS, QUANTIZERS
from .log import LogQuantizer


def agq_search(x: Tensor, value: Tensor, bits: int,
               taus: Sequence[int] = (1, 2, 4),
               p: float = 2.4) -> Tuple[Tensor, Tensor]:
    """PTQ4SAM's per-batch AGQ search (Lv et al., CVPR 2024): for every τ,
    the scale s of the base-2^(1/τ) log quantizer Q_τ,s that minimises the
    error after the matmul with V,

        E(τ, s) = mean |Q_τ,s(x)·V − x·V|^p,

    by bounded Brent search (``scipy.optimize.minimize_scalar``,
    method='bounded', xatol 1e-5, at most 500 evaluations) over
    s ∈ [min(0.1, 0.01·m), m], m = max |x|, in float32.

    Args:
        x: the probabilities (..., N, M).
        value: the right operand V (..., M, D) of the matmul.
        bits: bit-width b.
        taus: the candidate τ.
        p: exponent of the error.

    Returns:
        (E, s): the lowest error and its scale per τ, float64, shape (K,).
    """
    x, value = x.detach().float(), value.detach().float()
    target = x @ value
    top = float(x.abs().max())
    bounds = (min(0.1, 0.01 * top), top)
    quantizer = LogQuantizer(bits=bits)

    def error(s: float) -> float:
        xq = quantizer.fake_quant(x, torch.tensor(s, dtype=x.dtype), None)
        return float((xq @ value - target).abs().pow(p).mean())

    errors, scales = [], []
    for tau in taus:
        quantizer.root = tau
        best = minimize_scalar(error, bounds=bounds, method='bounded',
                               options=dict(xatol=1e-5, maxiter=500))
        errors.append(float(best.fun))
        scales.append(float(best.x))
    return (torch.tensor(errors, dtype=torch.float64),
            torch.tensor(scales, dtype=torch.float64))


@OBSERVERS.register_module()
class AGQObserver(BaseObserver):
    """The calibration state of :class:`AGQQuantizer`: one row per
    candidate τ_k with lo_k = the mean over batches of the lowest error
    E(τ_k) and hi_k = the mean of its scale (``BaseObserver.accumulate``;
    ranks merge as running means, ``BaseObserver.sync``). The mean error
    has the argmin of the reference's sum. Only AGQQuantizer feeds it: an
    update's ``rows`` are one batch's (E, s) pairs, shape (K, 2)."""

    def batch_range(self, rows: Tensor,
                    quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        return rows[:, 0], rows[:, 1]


@QUANTIZERS.register_module()
class AGQQuantizer(LogQuantizer):
    """Adaptive Granularity Quantization (AGQ; Lv et al., PTQ4SAM, CVPR
    2024): a log quantizer of base 2^(1/τ),

        q = clamp(round(−τ·log2(x/s)), 0, 2^b − 1),   x̂ = s·2^(−q/τ),

    x̂ = 0 where round(−τ·log2(x/s)) ≥ 2^b, with τ ∈ ``taus`` chosen per
    softmax in calibration: each batch runs :func:`agq_search` on the
    probabilities and V, the per-τ scales are averaged and the errors
    summed over the batches, τ = argmin of the errors, s = its mean scale.

    It needs V, the right operand of the matmul that reads the
    probabilities (``takes_value``): the attention capture applies it to
    that matmul's left operand and passes ``value`` (the matmul's own
    operand: FP V, before V's quantizer). The chosen τ is the buffer
    ``tau``.

    Args:
        bits: bit-width b.
        taus: the candidate τ.
        p: exponent of the search error.
        observer: only ``dict(type='AGQObserver')`` (the default).
        name: layer name used in messages.
    """

    takes_value = True

    def __init__(self,
                 bits: int = 4,
                 taus: Sequence[int] = (1, 2, 4),
                 p: float = 2.4,
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        observer = observer or dict(type='AGQObserver')
        if observer.get('type') not in ('AGQObserver', AGQObserver):
            raise ValueError(f'{name or "AGQQuantizer"}: observer '
                             f'{observer.get("type")!r}; AGQ searches its '
                             f'scale itself and keeps its statistics in '
                             f'AGQObserver (leave observer out)')
        super().__init__(bits=bits, observer=observer, name=name)
        if not taus or any(int(t) != t or t < 1 for t in taus):
            raise ValueError(f'taus={taus!r} must be positive integers')
        self.taus = tuple(int(t) for t in taus)
        self.p = p
        self.register_buffer('tau', torch.tensor(self.taus[0]))

    @property
    def root(self) -> int:
        return int(self.tau)

    def refresh_qparams(self) -> None:
        """τ = argmin of the mean errors; s = the mean scale of that τ."""
        errors, scales = self.observer.range()
        k = int(errors.argmin())
        self.tau = torch.tensor(self.taus[k], device=scales.device)
        scale = scales[k].reshape(1).float()
        self.set_qparams(scale, torch.zeros_like(scale))

    def forward(self, x: Tensor, value: Optional[Tensor] = None) -> Tensor:
        if not self.observing:
            return super().forward(x)
        if value is None:
            raise RuntimeError(
                f'{self.name or "AGQQuantizer"} calibrates on the error '
                f'after the matmul with V, but got no V: use it as '
                f'quant_cfg.attn.softmax (the attention capture passes V)')
        errors, scales = agq_search(x, value, self.bits, self.taus, self.p)
        return self.forward_searched(
            x, torch.stack([errors, scales], dim=1).to(x.device))

    def extra_repr(self) -> str:
        return super().extra_repr() + f', taus={self.taus}'
