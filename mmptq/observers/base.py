"""Observers: statistics of a tensor viewed as rows (C, N) → a clip range
(lo, hi) per row. Rows come from the quantizer (one row per tensor, channel
or group), so per-channel observation is per-tensor observation of each row.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine import dist
from torch import Tensor, nn

#: columns processed at once by the chunked statistics (bounds peak memory)
CHUNK = 1 << 22


def check_finite(rows: Tensor, name: str) -> None:
    """Raise a ValueError naming the layer if rows hold NaN or Inf (amax
    and amin propagate NaN, so two reductions find any of them; faster on
    CPU than one ``torch.aminmax``)."""
    if rows.numel() and not (torch.isfinite(rows.amax())
                             and torch.isfinite(rows.amin())):
        bad = int((~torch.isfinite(rows)).sum())
        raise ValueError(
            f'{name or "a quantizer"}: its input has {bad} NaN/Inf values '
            f'during calibration; check the FP model on the calibration '
            f'data (checkpoint, data pipeline, fp16 overflow)')


#: a long single row is first cut at a threshold read from a strided
#: sample of about this many values (see ``_survivors``)
SAMPLE = 1 << 16


def _survivors(row: Tensor, k: int, largest: bool) -> Optional[Tensor]:
    """The values of the 1-D ``row`` at or beyond a threshold t taken from
    a strided sample (its ⌈1.5·k/stride⌉+16-th most extreme value), if at
    least k values survive: they then contain the k most extreme values of
    ``row`` (the k-th is at or beyond t), so a top-k on them is exact.
    None when the row is too short to gain or too few survive."""
    n = row.numel()
    stride = n // SAMPLE
    if stride < 4 or 4 * k > n:
        return None
    sample = row[::stride]
    k_s = min(sample.numel(), math.ceil(1.5 * k / stride) + 16)
    t = sample.topk(k_s, largest=largest, sorted=False).values
    kept = row[row >= t.min()] if largest else row[row <= t.max()]
    return kept if kept.numel() >= k else None


def _extreme_k(rows: Tensor, k: int, largest: bool) -> Tensor:
    """The k largest (or smallest) values of each row, sorted from the
    extreme inward, computed chunk by chunk (exact, bounded memory); a
    single long row is pre-filtered by ``_survivors``."""
    if rows.shape[0] == 1:
        kept = _survivors(rows[0], k, largest)
        if kept is not None:
            rows = kept[None]
    best = None
    for chunk in rows.split(CHUNK, dim=1):
        kk = min(k, chunk.shape[1])
        top = chunk.topk(kk, dim=1, largest=largest, sorted=False).values
        best = top if best is None else torch.cat([best, top], dim=1)
        if best.shape[1] > k:
            best = best.topk(k, dim=1, largest=largest, sorted=False).values
    return best.sort(dim=1, descending=largest).values


def row_quantiles(rows: Tensor, qs: Sequence[float]) -> List[Tensor]:
    """Per-row q-quantiles for every q in ``qs``, with linear interpolation
    (as ``torch.quantile``), for rows of any length (``torch.quantile``
    refuses > 2^24 elements), from at most two selections: one from the
    top for all q ≥ 0.5, one from the bottom for the others.

    With n elements, position p = q·(n−1); value = v[⌊p⌋] + (p−⌊p⌋)·
    (v[⌊p⌋+1] − v[⌊p⌋]) for the ascending order statistics v."""
    bad = [q for q in qs if not 0.0 <= q <= 1.0]
    if bad:
        raise ValueError(f'quantile {bad[0]} is outside [0, 1]')
    n = rows.shape[1]

    def position(q: float) -> Tuple[int, float, int]:
        lower = int(q * (n - 1))
        return lower, q * (n - 1) - lower, min(lower + 1, n - 1)

    high = [position(q)[0] for q in qs if q >= 0.5]
    low = [position(q)[2] for q in qs if q < 0.5]
    # order statistics counted from the top / from the bottom
    top = _extreme_k(rows, n - min(high), largest=True) if high else None
    bottom = _extreme_k(rows, max(low) + 1, largest=False) if low else None
    out = []
    for q in qs:
        lower, frac, upper = position(q)
        if q >= 0.5:
            v_lo, v_hi = top[:, n - 1 - lower], top[:, n - 1 - upper]
        else:
            v_lo, v_hi = bottom[:, lower], bottom[:, upper]
        out.append(v_lo + frac * (v_hi - v_lo))
    return out


def quantile_rows(rows: Tensor, q: float) -> Tensor:
    """Per-row q-quantile (``row_quantiles`` of one q)."""
    return row_quantiles(rows, [q])[0]


class BaseObserver(nn.Module):
    """Accumulates a clip range per row over calibration batches.

    ``update(rows, quantizer)`` checks the input and folds in one batch;
    ``range()`` returns (lo, hi), each of shape (C,); ``sync()`` merges the
    states of the ranks of a distributed run (after the last batch).
    """

    #: buffers with one entry per row, empty until data is seen
    row_buffers: Tuple[str, ...] = ('lo', 'hi')

    def __init__(self) -> None:
        super().__init__()
        for key in self.row_buffers:
            self.register_buffer(key, torch.empty(0))
        self.register_buffer('num_batches', torch.zeros((), dtype=torch.long))

    def reset(self) -> None:
        """Forget every batch seen so far."""
        for key in self.row_buffers:
            setattr(self, key, torch.empty(0))
        self.num_batches.zero_()

    def update(self, rows: Tensor, quantizer: nn.Module) -> None:
        rows = rows.detach().float()
        if rows.numel() == 0:
            return
        lo, hi = self.checked_range(rows, quantizer)
        self.accumulate(lo, hi)
        self.num_batches += 1

    def checked_range(self, rows: Tensor,
                      quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        """``batch_range`` of rows first checked for NaN / Inf."""
        check_finite(rows, getattr(quantizer, 'name', ''))
        return self.batch_range(rows, quantizer)

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

    def sync(self, group: Optional[object] = None) -> None:
        """Merge the states of all ranks of ``group`` (default: the world)
        so that every rank ends with the same state; a no-op when
        torch.distributed is not initialised or has one rank.

        Call it once, on every rank, after the last calibration batch: it
        runs collectives, so all ranks must call it in the same order (a
        rank whose observer saw no data takes part too and ends with the
        global state). Afterwards ``num_batches`` is the total over the
        ranks; if no rank saw data the observer stays empty.

        Default (the running mean of ``accumulate``): the
        ``num_batches``-weighted mean Σ_r n_r·m_r / Σ_r n_r of the ranks'
        means m_r, computed in float64. That is the mean of all the ranks'
        per-batch ranges, i.e. what one process gets from the same set of
        batches in any order, up to float rounding (~1e-7 relative).
        """
        merged = self._merge_stats(group)
        if merged is None:
            return
        lo, hi, n, total = merged
        packed = torch.cat([lo, hi]).double() * n
        dist.all_reduce(packed, op='sum', group=group)
        packed /= total
        self._set_synced(*packed.float().chunk(2), total)

    def _merge_stats(
        self, group: Optional[object]
    ) -> Optional[Tuple[Tensor, Tensor, int, int]]:
        """First step of ``sync``: agree on the number of rows over the
        ranks (one all-gather of (num_batches, rows)). Returns None when
        there is nothing to do (not distributed, or no rank saw data),
        else (lo, hi, n, total): this rank's state, zeros of the agreed
        shape where it saw no data, its batch count and the total."""
        if dist.get_world_size(group) <= 1:
            return None
        device = self.num_batches.device
        n = int(self.num_batches)
        rows = self.lo.numel() if n else 0
        stats = torch.tensor([n, rows], dtype=torch.long, device=device)
        gathered = torch.stack(dist.all_gather(stats, group=group)).cpu()
        total = int(gathered[:, 0].sum())
        if total == 0:
            return None
        seen = gathered[gathered[:, 0] > 0, 1].unique()
        if len(seen) != 1:  # every rank sees the same table: all raise
            raise RuntimeError(
                f'{type(self).__name__}.sync: the ranks observed different '
                f'numbers of rows {seen.tolist()} (per-rank (batches, rows): '
                f'{gathered.tolist()}); every rank must quantize the same '
                f'model')
        rows = int(seen[0])
        if n:
            lo, hi = self.lo.float(), self.hi.float()
        else:
            lo = hi = torch.zeros(rows, device=device)
        return lo, hi, n, total

    def _set_synced(self, lo: Tensor, hi: Tensor, total: int) -> None:
        device = self.num_batches.device
        self.lo, self.hi = lo.to(device), hi.to(device)
        self.num_batches.fill_(total)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # lo / hi have one entry per row, known only after data was seen
        for key in self.row_buffers:
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def range(self) -> Tuple[Tensor, Tensor]:
        if self.num_batches == 0:
            raise RuntimeError(f'{type(self).__name__} has seen no data')
        return self.lo, self.hi
