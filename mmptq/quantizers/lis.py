"""Log-Int-Softmax (FQ-ViT): integer softmax with a 4-bit log2 output."""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from mmptq.registry import QUANTIZERS
from .base import check_bits
from .uniform import UniformQuantizer

#: I-BERT's second-order fit of exp on [−ln 2, 0]: a·x² + b·x + c
EXP_COEF = (0.35815147, 0.96963238, 1.0)
#: −ln 2 as I-BERT and FQ-ViT write it
NEG_LN2 = -0.6931


def int_exp(x_int: Tensor, scale: float, n: int = 30) -> Tensor:
    """I-BERT's i-exp (Kim et al. 2021, Alg. 2) for x = x_int·S ≤ 0, with
    integer x_int: x0 = ⌊−ln2 / S⌋, x_int ← max(x_int, n·x0),
    q = ⌊x_int / x0⌋, r = x_int − q·x0 (so x = r·S − q·ln2),
    L = r·(r + ⌊b / (a·S)⌋) + ⌊c / (a·S²)⌋ ≈ (a(rS)² + b·rS + c) / (aS²),
    exp_int = max(⌊L·2^(n−q)⌋, 0); exp(x) ≈ exp_int · a·S² / 2^n.
    Computed in float64 (exact integers below 2^53). As in I-BERT, x0·S
    stands for −ln 2: for a coarse step S it is off by up to S, and
    exp_int then follows exp(x·ln2 / |x0·S|) for large |x|."""
    a, b, c = EXP_COEF
    x0 = math.floor(NEG_LN2 / scale)
    x_int = x_int.double().clamp(min=n * x0)
    q = torch.floor(x_int / x0)
    r = x_int - x0 * q
    poly = r * (r + math.floor(b / a / scale)) + math.floor(c / a / scale**2)
    return torch.floor(poly * torch.pow(2.0, n - q)).clamp(min=0)


def log_int_softmax(x_int: Tensor, scale: float, bits: int,
                    masked: Optional[Tensor] = None,
                    exp_shift: int = 0) -> Tensor:
    """FQ-ViT's Log-Int-Softmax (Lin et al. 2022, Sec. 3.3) over the last
    dim of integer logits x_int (step ``scale``):
    e = int_exp(x_int − max x_int), P = round(Σe / e) (an integer ≥ 1),
    k = ⌊log2 P⌋ + [P − 2^⌊log2 P⌋ ≥ 2^(⌊log2 P⌋−1)] (P rounded to the
    nearest power of two, with the bit after the leading one),
    p̂ = 2^(−k) for k < 2^b, else 0 (below the range). ``masked``
    positions (−inf logits) get e = 0, hence p̂ = 0.

    ``exp_shift`` = m feeds i-exp x_int·2^m at step S/2^m (an integer
    shift): ln 2 is then represented to within S/2^m instead of S. FQ-ViT
    applies i-exp to 8-bit logits (m = 0), where a coarse S turns
    exp(x) into exp(0.8x) (I-BERT's own softmax input is a fine int32)."""
    if exp_shift:
        x_int, scale = x_int * 2**exp_shift, scale / 2**exp_shift
    if masked is not None:
        x_int = x_int.masked_fill(masked, float('-inf'))
    x_int = x_int - x_int.amax(dim=-1, keepdim=True)
    e = int_exp(x_int.nan_to_num(neginf=-2**62), scale)
    if masked is not None:
        e = e.masked_fill(masked, 0.0)
    inv = torch.round(e.sum(dim=-1, keepdim=True) / e.clamp(min=1.0))
    mantissa, exponent = torch.frexp(inv)  # inv = m·2^e, m ∈ [0.5, 1)
    k = exponent.double() - 1 + (mantissa >= 0.75).double()
    keep = (e > 0) & (k < 2**bits)
    return torch.where(keep, torch.pow(2.0, -k), torch.zeros_like(k))


@QUANTIZERS.register_module()
class LISQuantizer(nn.Module):
    """Log-Int-Softmax as a softmax quantizer (FQ-ViT, Sec. 3.3): the
    logits are quantized to ``input_bits`` (uniform asymmetric, per
    tensor, range from ``observer``, as FQ-ViT's 8-bit quantizer in front
    of the softmax), the softmax runs on the integers with I-BERT's
    i-exp (``exp_shift``: see ``log_int_softmax``), and its output is
    log2-quantized to ``bits`` (``log_int_softmax``). It takes the
    softmax *input*: ``QuantSoftmax`` hands it the logits
    (``takes_logits``) and the softmax dim last.

    While the logit quantizer is disabled (parallel calibration, or never
    reached) the output is the FP softmax. The gradient w.r.t. the logits
    is the FP softmax's (straight-through).
    """

    takes_logits = True

    def __init__(self,
                 bits: int = 4,
                 input_bits: int = 8,
                 exp_shift: int = 0,
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        super().__init__()
        self.name = name
        self.exp_shift = exp_shift
        self.bits = check_bits(bits, name)
        self.logits = UniformQuantizer(bits=input_bits, observer=observer,
                                       name=name)
        self.observer_type = self.logits.observer_type

    def forward(self, x: Tensor) -> Tensor:
        masked = torch.isneginf(x)
        has_mask = bool(masked.any())
        xq = self.logits(x.masked_fill(masked, 0.0) if has_mask else x)
        fp = torch.softmax(x, dim=-1)
        if not self.logits.enabled:
            return fp
        scale = float(self.logits.scale.reshape(()))
        x_int = torch.round(xq.double() / scale)
        out = log_int_softmax(x_int, scale, self.bits,
                              masked if has_mask else None,
                              self.exp_shift).to(fp.dtype)
        return out + (fp - fp.detach()) if fp.requires_grad else out

    def describe(self) -> dict:
        return dict(quantizer=type(self).__name__, bits=self.bits,
                    granularity='tensor', observer=self.observer_type,
                    input_bits=self.logits.bits)

    def extra_repr(self) -> str:
        return f'bits={self.bits}, input_bits={self.logits.bits}'
