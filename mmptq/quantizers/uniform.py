"""Uniform affine quantizer (with optional LSQ step learning)."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from mmptq.registry import QUANTIZERS
from .base import BaseQuantizer, grad_scale, round_ste


@QUANTIZERS.register_module()
class UniformQuantizer(BaseQuantizer):
    """Uniform (affine) fake quantizer, Jacob et al. 2018 / Nagel et al. 2021.

    x̂ = (clamp(round(x / s) + z, q_min, q_max) − z) · s, with
    [q_min, q_max] = [−2^(b−1), 2^(b−1)−1] if ``signed`` else [0, 2^b−1].

    From a clip range [lo, hi] (widened to contain 0):
      asymmetric: s = (hi − lo) / (q_max − q_min), z = q_min − round(lo / s);
      symmetric:  z = 0, s = 2·max(|lo|, |hi|) / (q_max − q_min) when signed,
                  s = hi / (q_max − q_min) when unsigned (lo ≥ 0 data).
    Rounding uses a straight-through gradient. After ``learn_scale()`` the
    step s is an ``nn.Parameter`` trained with LSQ's gradient scale
    g = 1 / sqrt(N_per_step · q_max) (Esser et al. 2020, Eq. 4).
    """

    def __init__(self,
                 bits: int = 8,
                 symmetric: bool = False,
                 signed: Optional[bool] = None,
                 **kwargs) -> None:
        super().__init__(bits=bits, **kwargs)
        self.symmetric = symmetric
        self.signed = symmetric if signed is None else signed
        if self.signed:
            self.quant_min, self.quant_max = -2**(bits - 1), 2**(bits - 1) - 1
        else:
            self.quant_min, self.quant_max = 0, 2**bits - 1

    def qparams_from_range(self, lo: Tensor,
                           hi: Tensor) -> Tuple[Tensor, Tensor]:
        lo = torch.clamp(lo, max=0.0)
        hi = torch.clamp(hi, min=0.0)
        levels = self.quant_max - self.quant_min
        if self.symmetric:
            if self.signed:
                scale = 2 * torch.maximum(-lo, hi) / levels
            else:
                scale = hi / levels
            scale = scale.clamp(min=torch.finfo(torch.float32).tiny)
            return scale, torch.zeros_like(scale)
        scale = ((hi - lo) / levels).clamp(min=torch.finfo(torch.float32).tiny)
        zero_point = (self.quant_min - torch.round(lo / scale)).clamp(
            self.quant_min, self.quant_max)
        return scale, zero_point

    def fake_quant(self, x: Tensor, scale: Tensor,
                   zero_point: Tensor) -> Tensor:
        if isinstance(self.scale, nn.Parameter):
            per_step = max(x.numel() // max(scale.numel(), 1), 1)
            scale = grad_scale(scale, (per_step * self.quant_max)**-0.5)
        if not (x.requires_grad or scale.requires_grad):  # in place: 1 copy
            z = float(zero_point) if zero_point.numel() == 1 else 0.5
            if z.is_integer():  # integers: round(x/s) + z − z is exact
                return (x / scale).round_().clamp_(
                    self.quant_min - z, self.quant_max - z).mul_(scale)
            return (x / scale).round_().add_(zero_point).clamp_(
                self.quant_min, self.quant_max).sub_(zero_point).mul_(scale)
        q = torch.clamp(round_ste(x / scale) + zero_point, self.quant_min,
                        self.quant_max)
        return (q - zero_point) * scale

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', symmetric={self.symmetric}, '
                f'range=[{self.quant_min}, {self.quant_max}]')
