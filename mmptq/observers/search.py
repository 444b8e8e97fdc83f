"""Search observers: pick, per row, the candidate clip range whose fake
quantization has the lowest L_p error; ranges of several batches are
averaged (for one batch this is exactly the per-batch search)."""
from typing import Iterable, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmptq.registry import OBSERVERS
from .base import CHUNK, BaseObserver, row_quantiles


def lp_error(rows: Tensor, lo: Tensor, hi: Tensor, quantizer: nn.Module,
             p: float) -> Tensor:
    """mean over each row of |x − x̂|^p, x̂ quantized with (lo, hi):
    float32 sums per column chunk, accumulated in float64."""
    total = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    for chunk in rows.split(CHUNK, dim=1):
        err = quantizer.fake_quant_range(chunk, lo, hi).sub_(chunk)
        err = err.square_() if p == 2 else err.abs_().pow_(p)
        total += err.sum(dim=1).double()
    return total / rows.shape[1]


class SearchObserver(BaseObserver):
    """Base of the L_p search observers; subclasses list the candidates."""

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f'p={p} must be positive')
        self.p = p

    def candidates(self, rows: Tensor) -> List[Tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def batch_range(self, rows: Tensor,
                    quantizer: nn.Module) -> Tuple[Tensor, Tensor]:
        return self.select(rows, quantizer, self.candidates(rows))

    def select(self, rows: Tensor, quantizer: nn.Module,
               candidates: Iterable[Tuple[Tensor, Tensor]]
               ) -> Tuple[Tensor, Tensor]:
        """Per row, the first candidate (lo, hi) in ``candidates`` order
        with the lowest ``lp_error`` (strict improvement replaces). The
        candidates may be a generator: one is held at a time."""
        best_lo = best_hi = best_err = None
        for lo, hi in candidates:
            err = lp_error(rows, lo, hi, quantizer, self.p)
            if best_err is None:
                best_lo, best_hi, best_err = lo, hi, err
                continue
            better = err < best_err
            best_lo = torch.where(better, lo, best_lo)
            best_hi = torch.where(better, hi, best_hi)
            best_err = torch.where(better, err, best_err)
        return best_lo, best_hi


@OBSERVERS.register_module()
class MSEObserver(SearchObserver):
    """Shrink search of [min, max]: candidates [α_i·min, α_i·max],
    α_i = 1 − ``step``·i, i = 0..``num_candidates``−1, scored by mean
    |x − x̂|^p (p = 2.4 by default), the first lowest kept.

    This is BRECQ's ``scale_method='mse'`` (yhhhli/BRECQ,
    quant/quant_layer.py, ``UniformAffineQuantizer.init_quantization_scale``:
    80 factors 1 − 0.01·i, L2.4 mean), which QDrop's first release kept
    (wimh966/QDrop, quant/quant_layer.py); here 100 factors by default
    (down to α = 0.01), and the range is widened to contain 0 by the
    quantizer (BRECQ keeps a one-signed row's [α·min, α·max]). It is a 1-D
    search: for an asymmetric quantizer every candidate has the zero point
    of [min, max]. QDrop's later ``MSEObserver`` (qdrop/quantization/
    observer.py) searches ranges × every zero point instead: that is
    :class:`MSEGridObserver`.

    ``running_range=False``: [min, max] of each batch, and the batch
    winners are averaged over the batches. ``running_range=True`` (FQ-ViT's
    OMSE): [min, max] over all batches seen so far, the candidates scored
    on the latest batch, whose winner is the range (after calibration: the
    search on the last batch within the global range). A distributed
    ``sync`` then averages the ranks' winners (``BaseObserver.sync``)."""

    row_buffers = ('lo', 'hi', 'run_lo', 'run_hi')

    def __init__(self,
                 p: float = 2.4,
                 num_candidates: int = 100,
                 step: float = 0.01,
                 running_range: bool = False) -> None:
        super().__init__(p)
        self.running_range = running_range
        if num_candidates < 1 or step <= 0 or step * (num_candidates - 1) >= 1:
            raise ValueError(
                f'{type(self).__name__}: need num_candidates >= 1 and '
                f'0 < step·(num_candidates−1) < 1, got num_candidates='
                f'{num_candidates}, step={step}')
        self.num_candidates = num_candidates
        self.step = step

    def candidates(self, rows: Tensor) -> List[Tuple[Tensor, Tensor]]:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.running_range:
            if self.num_batches > 0:
                lo = torch.minimum(self.run_lo, lo)
                hi = torch.maximum(self.run_hi, hi)
            self.run_lo, self.run_hi = lo, hi
        return [(lo * (1 - self.step * i), hi * (1 - self.step * i))
                for i in range(self.num_candidates)]

    def accumulate(self, lo: Tensor, hi: Tensor) -> None:
        if self.running_range:  # the latest batch's winner
            self.lo, self.hi = lo, hi
        else:
            super().accumulate(lo, hi)


@OBSERVERS.register_module()
class OMSEObserver(MSEObserver):
    """OMSE (Choukroun et al. 2019) as in FQ-ViT: shrink [min, max] by
    (1 − 0.01·i), i = 0..89, and keep the candidate with the lowest L2
    error (p = 2). FQ-ViT searches once, on the last calibration batch,
    within the min/max of all batches: ``running_range=True``."""

    def __init__(self,
                 p: float = 2.0,
                 num_candidates: int = 90,
                 step: float = 0.01,
                 running_range: bool = False) -> None:
        super().__init__(p=p, num_candidates=num_candidates, step=step,
                         running_range=running_range)


@OBSERVERS.register_module()
class PercentileSearchObserver(SearchObserver):
    """RepQ-ViT's search: candidates (quantile(x, 1−c), quantile(x, c)) for
    c in ``percentiles`` (0.999, 0.9999, 0.99999), kept by L2 error."""

    def __init__(self,
                 percentiles: Sequence[float] = (0.999, 0.9999, 0.99999),
                 p: float = 2.0) -> None:
        super().__init__(p)
        if not percentiles or not all(0.5 < c <= 1.0 for c in percentiles):
            raise ValueError(f'percentiles={percentiles} must be a non-empty '
                             f'list of values in (0.5, 1]')
        self.percentiles = tuple(percentiles)

    def candidates(self, rows: Tensor) -> List[Tuple[Tensor, Tensor]]:
        k = len(self.percentiles)
        values = row_quantiles(
            rows, [1.0 - c for c in self.percentiles] + list(self.percentiles))
        return list(zip(values[:k], values[k:]))
