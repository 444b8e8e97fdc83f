"""AdaRound: learned rounding of weights (Nagel et al., ICML 2020)."""
import torch
from torch import Tensor, nn

from mmptq.registry import QUANTIZERS
from .uniform import UniformQuantizer

#: stretch of the rectified sigmoid, Eq. 23: h = clip(σ(V)(ζ − γ) + γ, 0, 1)
ZETA, GAMMA = 1.1, -0.1


@QUANTIZERS.register_module()
class AdaRoundQuantizer(UniformQuantizer):
    """Uniform weight quantizer whose rounding direction is learned.

    Ŵ = s·(clamp(⌊W/s⌋ + h(V) + z, q_min, q_max) − z) (AdaRound Eq. 22),
    with the rectified sigmoid h(V) = clip(σ(V)·1.2 − 0.1, 0, 1) (Eq. 23)
    while ``soft``, and the hard rounding h = [V ≥ 0] afterwards. V starts
    where h equals the fractional part of W/s, so the soft quantizer
    reproduces W exactly (inside the clip range) before training. The
    regulariser Σ 1 − |2h − 1|^β (Eq. 24) pushes h to {0, 1}.

    Built from a calibrated ``UniformQuantizer`` and the weight it
    quantizes (``from_uniform``); scale and zero-point stay fixed.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.soft = True
        self.alpha = nn.Parameter(torch.empty(0))

    @classmethod
    def from_uniform(cls, quantizer: UniformQuantizer,
                     weight: Tensor) -> 'AdaRoundQuantizer':
        if not quantizer.calibrated:
            raise RuntimeError(f'{quantizer.name}: AdaRound starts from a '
                               f'calibrated weight quantizer')
        new = cls(bits=quantizer.bits, symmetric=quantizer.symmetric,
                  signed=quantizer.signed, granularity=quantizer.granularity,
                  ch_axis=quantizer.ch_axis, group_size=quantizer.group_size,
                  name=quantizer.name)
        new.observer = None
        new.set_qparams(quantizer.scale, quantizer.zero_point)
        new.to(weight.device)
        with torch.no_grad():
            x = weight / new.broadcast(new.scale, weight)
            frac = (x - x.floor()).clamp(1e-6, 1 - 1e-6)
            # σ(V) = (frac − γ) / (ζ − γ)  ⇔  V = −log((ζ − γ)/(frac − γ) − 1)
            alpha = -torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1)
        new.alpha = nn.Parameter(alpha)
        return new

    def rounding(self) -> Tensor:
        """h(V): soft in [0, 1] while training, {0, 1} once hardened."""
        if self.soft:
            return (torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA).clamp(
                0, 1)
        return (self.alpha >= 0).to(self.alpha.dtype)

    def regularizer(self, beta: float) -> Tensor:
        """Σ 1 − |2h(V) − 1|^β (Eq. 24)."""
        h = self.rounding()
        return (1 - (2 * h - 1).abs().pow(beta)).sum()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape != self.alpha.shape:
            raise ValueError(f'{self.name}: AdaRound was set up for a weight '
                             f'of shape {tuple(self.alpha.shape)}, got '
                             f'{tuple(x.shape)}')
        scale = self.broadcast(self.scale, x)
        zero_point = self.broadcast(self.zero_point, x)
        q = torch.floor(x.detach() / scale) + self.rounding() + zero_point
        q = q.clamp(self.quant_min, self.quant_max)
        return (q - zero_point) * scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f', soft={self.soft}'
