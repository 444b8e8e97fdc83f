"""RepQ-ViT scale reparameterization of post-LayerNorm activations."""
from typing import List, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from mmptq.nn import QuantLinear
from mmptq.quantizers import UniformQuantizer
from mmptq.registry import MODEL_TRANSFORMS
from .base import BaseTransform, TransformContext
from .graph import NormUse, trace_norm_uses


def reparam_params(scale: Tensor, zero_point: Tensor, quant_min: int,
                   shift: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """RepQ-ViT, Sec. 4.2 (Eqs. 10-12): from per-channel (Δ_c, z_c) of a
    post-LayerNorm activation, the per-tensor Δ̃ = mean(Δ_c), z̃ = mean(z_c)
    (not rounded), the ratio r = Δ / Δ̃ and the shift
    b = min / r − miñ, where min_c = (q_min − z_c)·Δ_c and
    miñ = (q_min − z̃)·Δ̃. Then x' = x / r − b has every channel's range
    equal to [miñ, miñ + (q_max − q_min)·Δ̃]. ``shift=False`` gives b = 0
    (scale only). Returns (Δ̃, z̃, r, b)."""
    scale, zero_point = scale.flatten(), zero_point.flatten()
    target_scale, target_zp = scale.mean(), zero_point.mean()
    r = scale / target_scale
    if shift:
        lo = (quant_min - zero_point) * scale
        b = lo / r - (quant_min - target_zp) * target_scale
    else:
        b = torch.zeros_like(r)
    return target_scale, target_zp, r, b


@torch.no_grad()
def fold_reparam(norm: nn.LayerNorm, linears: List[nn.Linear], r: Tensor,
                 b: Tensor) -> List[nn.Linear]:
    """LayerNorm γ ← γ / r, β ← β / r − b; each following Linear
    W ← W·diag(r), bias ← bias + W_new·b: the output of the Linears is
    unchanged. Returns the Linears that had no bias and got one."""
    norm.weight.div_(r)
    norm.bias.div_(r).sub_(b)
    added = []
    for lin in linears:
        lin.weight.mul_(r)
        shift = lin.weight @ b
        if lin.bias is None:
            lin.bias = nn.Parameter(shift)
            added.append(lin)
        else:
            lin.bias.add_(shift)
    return added


@MODEL_TRANSFORMS.register_module()
class RepQReparam(BaseTransform):
    """RepQ-ViT scale reparameterization (Li et al., ICCV 2023, Sec. 4.2).

    The input of every Linear that reads a LayerNorm output is calibrated
    per channel (last dim); then the per-channel (Δ_c, z_c) are turned into
    one per-tensor quantizer by folding r = Δ_c / Δ̃ and the shift b into
    the LayerNorm affine and the Linear weight and bias
    (:func:`reparam_params`, :func:`fold_reparam`). The FP function is
    unchanged; the Linears' weight quantizers are re-initialised on the new
    weights, then the calibration data is fed again and every other
    activation quantizer is searched anew on the reparameterized model
    (the folded inputs keep Δ̃, z̃): in sequential calibration the layers
    after a fold see its per-tensor quantization, not the per-channel one
    of the first pass. The first pass stops after the last post-LayerNorm
    input (``first_pass_needs``). ``recalibrate=False`` is the reference
    code's schedule (its second forward only re-initialises the qkv / fc1
    weight quantizers; the other quantizers keep parameters fitted to the
    model before the fold): one pass, and on LayerNorm channels spread
    like a pretrained ViT's markedly worse (deit-outlier W4A4 93.70 vs
    95.95 top-1; docs/calibration-speed.md).

    Pairs are found by structure (``trace_norm_uses``), not by names: a
    LayerNorm whose output reaches one or more Linears only through
    element-moving ops. A LayerNorm that also feeds anything else (a conv,
    an add, a concat) is skipped, and the summary says so.

    Padding: where a consumer sees zero rows that are not LayerNorm outputs
    (mmdet / mmpretrain Swin pad feature maps to a multiple of the window
    size), the shift b would turn the padded zeros into −b and change the
    FP output; the reference code folds b there all the same. mmptq folds
    only r there (exact); that per-tensor quantizer takes the union of the
    rescaled channel ranges (searched again with ``recalibrate``).

    Args:
        recalibrate: calibrate every activation quantizer again after the
            fold (the default; False: the reference's schedule, see
            above).
    """

    def __init__(self, recalibrate: bool = True) -> None:
        super().__init__()
        self.recalibrate = recalibrate
        self.uses: dict = {}
        self.pairs: List[Tuple[NormUse, nn.LayerNorm, List[QuantLinear]]] = []

    def before_wrap(self, model: nn.Module, ctx: TransformContext) -> None:
        self.uses = trace_norm_uses(model, ctx.run_batch)

    @classmethod
    def restore(cls, model: nn.Module, row: dict) -> None:
        """The folded shift needs a bias in consumers that had none: add
        one (zeros; the checkpoint holds its values)."""
        for name in row.get('bias_added', []):
            lin = model.get_submodule(name)
            lin.bias = nn.Parameter(lin.weight.new_zeros(lin.out_features))

    def _row(self, use: NormUse, mode: str, reason: str = '',
             **extra) -> None:
        self.rows.append(dict(transform='RepQReparam', target=use.norm,
                              consumers=list(use.linears), mode=mode,
                              reason=reason, **extra))

    def before_calibration(self, model: nn.Module,
                           ctx: TransformContext) -> None:
        self.rows, self.pairs = [], []
        for use in self.uses.values():
            reason = use.reason
            linears = [model.get_submodule(n) for n in use.linears]
            for name, lin in zip(use.linears, linears):
                if reason:
                    break
                q = getattr(lin, 'input_quantizer', None)
                # a Linear subclass with its own forward qualifies too: the
                # trace saw its input reach F.linear unchanged
                if getattr(lin, 'kind', None) != 'linear' or q is None:
                    reason = f'{name} is not quantized'
                elif not isinstance(q, UniformQuantizer) or q.symmetric:
                    sym = getattr(q, 'symmetric', False)
                    reason = (f'{name}.input is {type(q).__name__}'
                              f'{" (symmetric)" if sym else ""}; '
                              f'RepQReparam needs an asymmetric '
                              f'UniformQuantizer')
            if reason:
                self._row(use, 'skipped', reason)
                continue
            for lin in linears:
                q = lin.input_quantizer
                q.granularity, q.ch_axis = 'channel', -1
                q.observer.reset()
            self.pairs.append((use, model.get_submodule(use.norm), linears))

    def first_pass_needs(self) -> Optional[List[nn.Module]]:
        """With ``recalibrate``, the fold needs the first pass only up to
        the last post-LayerNorm input: everything after it is searched
        again in the second pass."""
        if not (self.recalibrate and self.pairs):
            return None
        return [lin.input_quantizer for _, _, linears in self.pairs
                for lin in linears]

    def after_calibration(self, model: nn.Module,
                          ctx: TransformContext) -> None:
        fixed, names = [], {m: n for n, m in model.named_modules()}
        for use, norm, linears in self.pairs:
            q0 = linears[0].input_quantizer
            for lin in linears:
                lin.input_quantizer.granularity = 'tensor'
            if not q0.calibrated:
                self._row(use, 'skipped', 'not reached by the calibration '
                          'data')
                continue
            shift = not use.padded
            scale, zp, r, b = reparam_params(q0.scale, q0.zero_point,
                                             q0.quant_min, shift=shift)
            lo = (q0.quant_min - q0.zero_point.flatten()) * q0.scale.flatten()
            added = fold_reparam(norm, linears, r, b)
            for lin in linears:
                q = lin.input_quantizer
                lin.calibrate_weight()
                q.observer.reset()
                if shift:
                    q.set_qparams(scale.reshape(1), zp.reshape(1))
                    fixed.append(q)
                else:  # the union of the rescaled ranges, until recalibrated
                    levels = q.quant_max - q.quant_min
                    q.set_qparams(*q.qparams_from_range(
                        (lo / r).min().reshape(1),
                        (lo / r + levels * scale).max().reshape(1)))
                    if not self.recalibrate:
                        fixed.append(q)
            self._row(use, 'scale+shift' if shift else
                      'scale only (consumer pads)',
                      bias_added=[names[lin] for lin in added])
        done = sum(r['mode'] != 'skipped' for r in self.rows)
        print_log(f'mmptq: RepQReparam folded {done} of {len(self.rows)} '
                  f'LayerNorm outputs into per-tensor quantizers',
                  logger='current')
        if self.recalibrate and done:  # nothing folded: nothing moved
            ctx.recalibrate(fixed)
