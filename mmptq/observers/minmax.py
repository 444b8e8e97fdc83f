"""Range observers: running min/max, EMA of min/max, percentile."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from mmptq.registry import OBSERVERS
from .base import BaseObserver, quantile_rows


@OBSERVERS.register_module()
class MinMaxObserver(BaseObserver):
    """lo = min over all batches of x, hi = max over all batches of x."""

    def batch_range(self, rows: Tensor,
                    quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        return rows.amin(dim=1), rows.amax(dim=1)

    def accumulate(self, lo: Tensor, hi: Tensor) -> None:
        if self.num_batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo = torch.minimum(self.lo, lo)
            self.hi = torch.maximum(self.hi, hi)


class EMAMixin:
    """m ← m + μ·(m_batch − m) after the first batch, which sets m
    (FQ-ViT's EMA with μ = ``momentum`` = 0.01)."""

    momentum: float

    def accumulate(self, lo: Tensor, hi: Tensor) -> None:
        if self.num_batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


def check_momentum(momentum: float) -> float:
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f'momentum={momentum} must be in (0, 1]')
    return momentum


@OBSERVERS.register_module()
class EMAMinMaxObserver(EMAMixin, MinMaxObserver):
    """Per-batch min/max smoothed across batches:
    m ← m + μ·(m_batch − m), μ = ``momentum`` (FQ-ViT: 0.01)."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = check_momentum(momentum)


@OBSERVERS.register_module()
class PercentileObserver(EMAMixin, BaseObserver):
    """Per-batch percentiles, EMA-smoothed across batches (FQ-ViT):
    hi_b = quantile(x, ``percentile``), lo_b = quantile(x, ``lower``)
    (default lower = 1 − percentile), then m ← m + μ·(m_b − m)."""

    def __init__(self,
                 percentile: float = 0.99999,
                 lower: Optional[float] = None,
                 momentum: float = 0.01) -> None:
        super().__init__()
        self.percentile = percentile
        self.lower = 1.0 - percentile if lower is None else lower
        if not 0.0 <= self.lower < self.percentile <= 1.0:
            raise ValueError(f'PercentileObserver needs 0 <= lower < '
                             f'percentile <= 1, got lower={self.lower}, '
                             f'percentile={self.percentile}')
        self.momentum = check_momentum(momentum)

    def batch_range(self, rows: Tensor,
                    quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        return quantile_rows(rows, self.lower), quantile_rows(
            rows, self.percentile)
