"""Observers: statistics of a tensor viewed as rows (C, N) → a clip range
(lo, hi) per row. Rows come from the quantizer (one row per tensor, channel
or group), so per-channel observation is per-tensor observation of each row.
"""
from typing import Tuple

import torch
from torch import Tensor, nn

#: columns processed at once by the chunked statistics (bounds peak memory)
CHUNK = 1 << 22


def check_finite(rows: Tensor, name: str) -> None:
    """Raise a ValueError naming the layer if rows hold NaN or Inf (amax
    and amin propagate NaN, so two reductions find any of them)."""
    if rows.numel() and not (torch.isfinite(rows.amax())
                             and torch.isfinite(rows.amin())):
        bad = int((~torch.isfinite(rows)).sum())
        raise ValueError(
            f'{name or "a quantizer"}: its input has {bad} NaN/Inf values '
            f'during calibration; check the FP model on the calibration '
            f'data (checkpoint, data pipeline, fp16 overflow)')


def _extreme_k(rows: Tensor, k: int, largest: bool) -> Tensor:
    """The k largest (or smallest) values of each row, sorted from the
    extreme inward, computed chunk by chunk (exact, bounded memory)."""
    best = None
    for chunk in rows.split(CHUNK, dim=1):
        kk = min(k, chunk.shape[1])
        top = chunk.topk(kk, dim=1, largest=largest, sorted=False).values
        best = top if best is None else torch.cat([best, top], dim=1)
        if best.shape[1] > k:
            best = best.topk(k, dim=1, largest=largest, sorted=False).values
    return best.sort(dim=1, descending=largest).values


def quantile_rows(rows: Tensor, q: float) -> Tensor:
    """Per-row q-quantile with linear interpolation (as ``torch.quantile``),
    for rows of any length (``torch.quantile`` refuses > 2^24 elements).

    With n elements, position p = q·(n−1); value = v[⌊p⌋] + (p−⌊p⌋)·
    (v[⌊p⌋+1] − v[⌊p⌋]) for the ascending order statistics v."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f'quantile {q} is outside [0, 1]')
    n = rows.shape[1]
    pos = q * (n - 1)
    lower = int(pos)
    frac = pos - lower
    upper = min(lower + 1, n - 1)
    if q >= 0.5:  # order statistics counted from the top
        top = _extreme_k(rows, n - lower, largest=True)
        v_lo, v_hi = top[:, n - 1 - lower], top[:, n - 1 - upper]
    else:
        bottom = _extreme_k(rows, upper + 1, largest=False)
        v_lo, v_hi = bottom[:, lower], bottom[:, upper]
    return v_lo + frac * (v_hi - v_lo)


class BaseObserver(nn.Module):
    """Accumulates a clip range per row over calibration batches.

    ``update(rows, quantizer)`` checks the input and folds in one batch;
    ``range()`` returns (lo, hi), each of shape (C,).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer('lo', torch.empty(0))
        self.register_buffer('hi', torch.empty(0))
        self.register_buffer('num_batches', torch.zeros((), dtype=torch.long))

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.lo, self.hi = torch.empty(0), torch.empty(0)
        self.num_batches.zero_()

    def update(self, rows: Tensor, quantizer: nn.Module) -> None:
        rows = rows.detach().float()
        check_finite(rows, getattr(quantizer, 'name', ''))
        if rows.numel() == 0:
            return
        lo, hi = self.batch_range(rows, quantizer)
        self.accumulate(lo, hi)
        self.num_batches += 1

    def batch_range(self, rows: Tensor,
                    quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        """The range of one batch."""
        raise NotImplementedError

    def accumulate(self, lo: Tensor, hi: Tensor) -> None:
        """Fold one batch's range into the state; default: running mean of
        the per-batch ranges (exactly the batch's range for one batch)."""
        if self.num_batches == 0:
            self.lo, self.hi = lo, hi
        else:
            n = float(self.num_batches)
            self.lo = self.lo + (lo - self.lo) / (n + 1)
            self.hi = self.hi + (hi - self.hi) / (n + 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # lo / hi have one entry per row, known only after data was seen
        for key in ('lo', 'hi'):
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def range(self) -> Tuple[Tensor, Tensor]:
        if self.num_batches == 0:
            raise RuntimeError(f'{type(self).__name__} has seen no data')
        return self.lo, self.hi
