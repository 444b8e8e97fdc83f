"""L_p search over step size × zero point (QDrop's MSE observer)."""
from typing import Iterator, Tuple

import torch
from torch import Tensor, nn

from mmptq.registry import OBSERVERS
from .search import SearchObserver


def is_affine_asymmetric(quantizer: nn.Module) -> bool:
    """True for a quantizer with an integer grid [quant_min, quant_max] and
    a free zero point (``UniformQuantizer(symmetric=False)``)."""
    return (getattr(quantizer, 'symmetric', True) is False
            and hasattr(quantizer, 'quant_min')
            and hasattr(quantizer, 'quant_max'))


@OBSERVERS.register_module()
class MSEGridObserver(SearchObserver):
    """Grid search of the step size and the zero point, per row, scored by
    mean |x − x̂|^p (p = 2.4 by default): QDrop's ``MSEObserver``
    (wimh966/QDrop, qdrop/quantization/observer.py, ``perform_2D_search`` /
    ``perform_1D_search``).

    With K = quant_max − quant_min, n = ``num_candidates`` and the row's
    range widened to contain 0, R = max(x, 0)_max − min(x, 0)_min:

    - asymmetric quantizer (2-D): step s_j = (j/n)·R / K, j = 1..n, and for
      each step every zero point z = quant_min + m, m = 0..K: the range
      [−m·s_j, (K − m)·s_j], whose parameters are exactly (s_j, z). That is
      n·(K+1) candidates, scored in the order (j, then m), the first lowest
      kept. A row with no negative value is searched at m = 0 only, one
      with no positive value at m = K only: there every other zero point
      is no better (it moves grid points to the side without data), which
      is QDrop's 1-D search of a one-signed tensor ([0, t_j] / [−t_j, 0]).
    - symmetric quantizer, or one without a zero-point grid (log
      quantizers): 1-D, [−t_j, t_j] with t_j = (j/n)·max|x|, j = 1..n.

    For a row with both signs, :class:`MSEObserver`'s candidate α·[min, max]
    with α = 1 − 0.01·i is (s_j, z) with j = n·α when n = 100: its zero
    point is that of [min, max] for every α. So with the same p this grid
    contains MSEObserver's 100 candidates (up to float rounding of the
    step) and its error is never higher on a batch.

    Differences from QDrop: one-signedness is decided per row and batch
    (QDrop: for the whole tensor, on its first batch), and the winners of
    several batches are averaged like every search observer here (QDrop's
    ``AvgMSEObserver``; its ``MSEObserver`` keeps the min of the winners'
    lo and the max of their hi). Weights are observed once, so for them
    this is exactly QDrop's search.

    Cost: n·(K+1) evaluations of the fake quantization of the rows (1600
    at 4 bits, 25600 at 8 bits with n = 100), each over column chunks of
    ``CHUNK`` (bounded memory); MSEObserver makes n.
    """

    def __init__(self, p: float = 2.4, num_candidates: int = 100) -> None:
        super().__init__(p)
        if isinstance(num_candidates, bool) or not isinstance(
                num_candidates, int) or num_candidates < 1:
            raise ValueError(f'{type(self).__name__}: num_candidates='
                             f'{num_candidates!r} must be a positive integer')
        self.num_candidates = num_candidates

    def batch_range(self, rows: Tensor,
                    quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        if is_affine_asymmetric(quantizer):
            grid = self.grid_candidates(
                rows, int(quantizer.quant_max) - int(quantizer.quant_min))
        else:
            grid = self.candidates(rows)
        return self.select(rows, quantizer, grid)

    def fractions(self, like: Tensor) -> Tensor:
        """j/n for j = 1..n (float64, then the rows' dtype)."""
        n = self.num_candidates
        return (torch.arange(1, n + 1, dtype=torch.float64) / n).to(like)

    def candidates(self, rows: Tensor) -> Iterator[Tuple[Tensor, Tensor]]:
        """The 1-D search: [−t_j, t_j], t_j = (j/n)·max|x|."""
        absmax = torch.maximum(rows.amax(dim=1), -rows.amin(dim=1))
        for frac in self.fractions(rows):
            t = absmax * frac
            yield -t, t

    def grid_candidates(self, rows: Tensor,
                        levels: int) -> Iterator[Tuple[Tensor, Tensor]]:
        """The 2-D search for a grid of ``levels`` + 1 integers: for each
        step s_j, the ranges [−m·s_j, (levels − m)·s_j], m = 0..levels
        (per row m = 0 only where min ≥ 0, m = levels only where
        max ≤ 0; every m where all rows are one-signed is skipped)."""
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        nonneg, nonpos = lo >= 0, (hi <= 0) & (lo < 0)
        width = hi.clamp(min=0) - lo.clamp(max=0)
        mixed = ~(nonneg | nonpos)
        fixed = nonpos.to(rows.dtype) * levels  # m of the one-signed rows
        shifts = range(levels + 1) if bool(mixed.any()) else range(1)
        for frac in self.fractions(rows):
            step = width * frac / levels
            for m in shifts:
                shift = torch.where(mixed, float(m), fixed)
                yield -shift * step, (levels - shift) * step

    def extra_repr(self) -> str:
        return f'p={self.p}, num_candidates={self.num_candidates}'
