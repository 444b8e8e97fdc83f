"""Power-of-Two Factor quantizer for LayerNorm inputs (FQ-ViT)."""
from typing import Optional, Tuple

import torch
from mmengine import dist
from torch import Tensor

from mmptq.observers import SearchObserver
from mmptq.observers.base import CHUNK
from mmptq.registry import QUANTIZERS
from .uniform import UniformQuantizer


@QUANTIZERS.register_module()
class PTFQuantizer(UniformQuantizer):
    """Power-of-Two Factor (Lin et al., FQ-ViT, IJCAI 2022, Sec. 3.2):
    one layer-wise range [min, max] over all channels, one shared
    zero-point and per-channel steps that differ by powers of two:

        s = (max − min) / (2^b − 1),  z = q_min − round(min / s),
        s_c = 2^(α_c − K) · s,  α_c ∈ {0..K} (K = ``max_alpha`` = 3),
        x̂_c = (clamp(round(x_c / s_c) + z, q_min, q_max) − z) · s_c,

    α_c = argmin_α ‖x_c − x̂_c(α)‖² (the smallest α on ties), searched on
    each calibration batch within the range seen so far (so the result is
    the search on the last batch, as FQ-ViT). Channels lie along
    ``ch_axis`` (the LayerNorm's last dim); min / max come from the
    observer's per-channel ranges (a range observer: MinMax by default).
    Before any search every α_c = K (plain layer-wise quantization).
    """

    # one α per channel
    CALIBRATED_SHAPES = UniformQuantizer.CALIBRATED_SHAPES + ('alpha', )

    def __init__(self,
                 bits: int = 8,
                 max_alpha: int = 3,
                 ch_axis: int = -1,
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        super().__init__(bits=bits, symmetric=False, granularity='channel',
                         ch_axis=ch_axis, observer=observer, name=name)
        if isinstance(self.observer, SearchObserver):
            raise ValueError(
                f'{name or "PTFQuantizer"}: {self.observer_type} searches '
                f'per-channel ranges, but PTF uses one layer-wise range and '
                f'searches the factors itself; use a range observer '
                f'(MinMaxObserver, EMAMinMaxObserver, PercentileObserver)')
        if not isinstance(max_alpha, int) or max_alpha < 0:
            raise ValueError(f'max_alpha={max_alpha!r} must be an integer '
                             f'>= 0')
        self.max_alpha = max_alpha
        self.register_buffer('alpha', torch.empty(0, dtype=torch.long))
        self._batch: Optional[Tensor] = None
        self._errors: Optional[Tensor] = None

    def layer_qparams(self, lo: Tensor, hi: Tensor) -> Tuple[Tensor, Tensor]:
        """(base step s / 2^K, shared zero-point z) of the layer-wise range
        [min(lo), max(hi)] (widened to contain 0)."""
        scale, zero_point = super().qparams_from_range(
            lo.min().reshape(1), hi.max().reshape(1))
        return scale / 2**self.max_alpha, zero_point

    def qparams_from_range(self, lo: Tensor,
                           hi: Tensor) -> Tuple[Tensor, Tensor]:
        base, zero_point = self.layer_qparams(lo, hi)
        alpha = self.alpha
        if alpha.numel() != lo.numel():
            alpha = torch.full_like(lo, self.max_alpha, dtype=torch.long)
        scale = base * torch.pow(2.0, alpha.to(base))
        return scale, zero_point.expand_as(scale).clone()

    def factor_errors(self, rows: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """(C, K+1): Σ over each row of (x − x̂)² for α = 0..K."""
        base, zero_point = self.layer_qparams(lo, hi)
        errors = torch.zeros(rows.shape[0], self.max_alpha + 1,
                             dtype=torch.float64, device=rows.device)
        for chunk in rows.split(CHUNK, dim=1):
            for a in range(self.max_alpha + 1):
                xq = self.fake_quant(chunk, base * 2**a, zero_point)
                errors[:, a] += xq.sub_(chunk).square_().sum(dim=1).double()
        return errors

    def update_qparams(self) -> None:
        """Parameters from the observer's range; with the batch being
        observed, search the factors α first. Without one (after a
        distributed ``sync``) the ranks' last error tables (each from its
        last batch within its own range) are summed and the factors picked
        again from the sum, so that every rank agrees."""
        lo, hi = self.observer.range()
        if self._batch is not None:
            self._errors = self.factor_errors(
                self.to_rows(self._batch).float(), lo, hi)
            self.alpha = self._errors.argmin(dim=1)
        elif dist.get_world_size() > 1:
            errors = self._errors
            if errors is None or errors.shape[0] != lo.numel():
                errors = torch.zeros(lo.numel(), self.max_alpha + 1,
                                     dtype=torch.float64, device=lo.device)
            dist.all_reduce(errors, op='sum')
            self.alpha = errors.argmin(dim=1)
        super().update_qparams()

    def forward(self, x: Tensor) -> Tensor:
        self._batch = x.detach() if self.observing else None
        try:
            return super().forward(x)
        finally:
            self._batch = None

    def freeze(self) -> None:
        super().freeze()
        self._errors = None

    def extra_repr(self) -> str:
        return super().extra_repr() + f', max_alpha={self.max_alpha}'
