"""Range observers: running min/max, EMA of min/max, percentile."""
from typing import Optional, Tuple

import torch
from mmengine import dist
from torch import Tensor, nn

from mmptq.registry import OBSERVERS
from .base import BaseObserver, check_finite, row_quantiles


@OBSERVERS.register_module()
class MinMaxObserver(BaseObserver):
    """lo = min over all batches of x, hi = max over all batches of x."""

    def batch_range(self, rows: Tensor,
                    quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        return rows.amin(dim=1), rows.amax(dim=1)

    def checked_range(self, rows: Tensor,
                      quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        """The per-row min and max propagate NaN and hold any Inf: the
        range itself shows a bad input, without a separate check.
        (``torch.aminmax`` along a dim is ~20x slower on CPU than both.)"""
        lo, hi = self.batch_range(rows, quantizer)
        if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            check_finite(rows, getattr(quantizer, 'name', ''))
        return lo, hi

    def accumulate(self, lo: Tensor, hi: Tensor) -> None:
        if self.num_batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo = torch.minimum(self.lo, lo)
            self.hi = torch.maximum(self.hi, hi)

    def sync(self, group: Optional[object] = None) -> None:
        """lo = min over the ranks, hi = max over the ranks (one all-reduce
        MIN of (lo, −hi)): exactly what one process gets on the union of
        the ranks' batches, whatever the sharding and order. Ranks that saw
        no data contribute (+inf, −inf). See ``BaseObserver.sync``."""
        merged = self._merge_stats(group)
        if merged is None:
            return
        lo, hi, n, total = merged
        if not n:
            lo = torch.full_like(lo, float('inf'))
            hi = torch.full_like(hi, float('-inf'))
        packed = torch.cat([lo, -hi])
        dist.all_reduce(packed, op='min', group=group)
        lo, neg_hi = packed.chunk(2)
        self._set_synced(lo, -neg_hi, total)


@OBSERVERS.register_module()
class AvgMinMaxObserver(MinMaxObserver):
    """lo, hi = the mean over batches of each batch's min and max: QDrop's
    and PTQ4SAM's activation observer (``AvgMinMaxObserver`` in their
    quantization/observer.py). The running mean and its distributed sync
    are ``BaseObserver``'s."""

    accumulate = BaseObserver.accumulate
    sync = BaseObserver.sync


class EMAMixin:
    """m ← m + μ·(m_batch − m) after the first batch, which sets m
    (FQ-ViT's EMA with μ = ``momentum`` = 0.01)."""

    momentum: float

    def sync(self, group: Optional[object] = None) -> None:
        """Merge the ranks' EMA states into their ``num_batches``-weighted
        mean Σ_r n_r·m_r / Σ_r n_r (see ``BaseObserver.sync``).

        An EMA depends on the order of the batches (after K batches it
        weights batch k by μ·(1−μ)^(K−k), the first by (1−μ)^(K−1)), and
        the ranks' final states do not determine the EMA of the interleaved
        stream one process would see: this is *not* the single-process
        result in general. Guaranteed: every rank ends with the same state;
        it lies elementwise between the smallest and the largest of the
        ranks' states (a convex combination, weights n_r / Σ n); it equals
        the ranks' common state when they agree, and the state of the only
        rank that saw data when just one did (so world size 1 or a single
        non-empty shard is exact)."""
        BaseObserver.sync(self, group)

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
        lo, hi = row_quantiles(rows, [self.lower, self.percentile])
        return lo, hi
