"""PD-Quant (Liu et al., CVPR 2023, "PD-Quant: Post-Training Quantization
based on Prediction Difference Metric"): QDrop's reconstruction plus

- the prediction-difference loss (Eq. 6): KL(softmax(z_FP / T) ‖
  softmax(z_Q / T)), z_Q the logits of the rest of the network run in FP
  on the unit's quantized output, weighted by ``pd_weight`` (1/λ_r);
- distribution correction (Sec. 3.3) of the FP input of units with
  BatchNorm.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from mmengine.utils import ProgressBar
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmptq.registry import RECONSTRUCTIONS
from .capture import quantization_off, set_call_indices
from .fit import rec_loss
from .qdrop import QDropReconstruction


def not_a_classifier(what: str) -> ValueError:
    """The error for a model without class logits (``what`` it does)."""
    return ValueError(
        f'PD-Quant\'s prediction loss needs a classifier whose tensor '
        f'forward returns (N, classes) logits; this model {what}. Use '
        f'QDropReconstruction (or pd_weight=0) for detectors and segmentors')


def forward_logits(model: nn.Module, inputs: Tensor) -> Tensor:
    """Class logits of a classifier: ``model(inputs, mode='tensor')`` for
    OpenMMLab models (after the data preprocessor), ``model(inputs)``
    otherwise."""
    if hasattr(model, 'data_preprocessor'):
        out = model(inputs, mode='tensor')
    else:
        out = model(inputs)
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else ''
        raise not_a_classifier(f'returns {type(out).__name__}{shape}')
    return out


def model_inputs(model: nn.Module, batch) -> Tensor:
    """The network input of a calibration batch."""
    if hasattr(model, 'data_preprocessor'):
        return model.data_preprocessor(batch, False)['inputs']
    if not isinstance(batch, Tensor):
        raise ValueError('PD-Quant needs tensor batches for a plain module')
    return batch


def correct_distribution(unit: nn.Module, fp_in, iters: int, lr: float,
                         weight: float):
    """PD-Quant's distribution correction (Sec. 3.3): the FP input x of a
    unit with BatchNorm layers is moved to x̃ minimising
    Σ_BN ‖μ_BN − μ(x̃)‖² + ‖σ_BN − σ(x̃)‖² (batch-averaged, statistics of
    each BN layer's input) + ‖x̃ − x‖² / ``weight``; returns (x̃ inputs,
    FP unit output on x̃), or None without BatchNorm."""
    bns = [m for m in unit.modules() if isinstance(m, _BatchNorm)
           and m.running_mean is not None]
    args, kwargs = fp_in
    if not bns or not args or not isinstance(args[0], Tensor):
        return None
    seen: List[Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(i[0]))
               for m in bns]
    x = args[0]
    x_t = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([x_t], lr=lr)
    try:
        with quantization_off(unit):
            for _ in range(iters):
                seen.clear()
                unit(x_t, *args[1:], **kwargs)
                loss = rec_loss(x_t, x) / weight
                for bn, feat in zip(bns, seen):
                    flat = feat.reshape(feat.shape[0], feat.shape[1], -1)
                    std = (flat.var(2) + 1e-6).sqrt()
                    ref_std = (bn.running_var + 1e-6).sqrt()
                    b = flat.shape[0]
                    loss = loss + (bn.running_mean - flat.mean(2)).pow(
                        2).sum() / b + (ref_std - std).pow(2).sum() / b
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                target = unit(x_t.detach(), *args[1:], **kwargs)
    finally:
        for h in handles:
            h.remove()
    return ((x_t.detach(), ) + tuple(args[1:]), kwargs), target


@RECONSTRUCTIONS.register_module()
class PDQuantReconstruction(QDropReconstruction):
    """PD-Quant: QDrop plus the KL between FP and quantized predictions
    (T = ``temperature`` 4, weight ``pd_weight`` 1/λ_r = 10; needs a
    classifier) and distribution correction of the inputs of units with
    BatchNorm (``dist_correction``: ``dc_iters`` Adam steps at ``dc_lr``,
    ``dc_weight`` the weight of the distance term)."""
    DEFAULTS = dict(QDropReconstruction.DEFAULTS, pd_weight=10.0,
                    temperature=4.0, dist_correction=True, dc_iters=500,
                    dc_lr=1e-3, dc_weight=0.02)

    def check_model(self, model: nn.Module, batch) -> None:
        """The prediction loss needs (N, classes) logits: one FP tensor
        forward of ``batch`` (a detector's fails or returns a tuple)."""
        if self.cfg['pd_weight'] <= 0:
            return
        with torch.no_grad():
            try:
                forward_logits(model, model_inputs(model, batch))
            except ValueError:
                raise
            except Exception as err:  # the model's own tensor forward fails
                raise not_a_classifier(
                    f'{type(model).__name__} fails in it '
                    f'({type(err).__name__}: {err})') from err

    def prepare(self, model: nn.Module, batches: list) -> None:
        """FP logits of every calibration batch (the targets of the
        prediction loss), when ``pd_weight`` > 0."""
        self._model = model
        self._extras = None
        if self.cfg['pd_weight'] <= 0:
            return
        extras = []
        bar = ProgressBar(len(batches))
        with torch.no_grad(), quantization_off(model):
            for batch in batches:
                inputs = model_inputs(model, batch)
                extras.append(dict(inputs=inputs.cpu(), fp_logits=forward_logits(
                    model, inputs).cpu()))
                bar.update()
        self._extras = extras

    def sample_extras(self) -> Optional[list]:
        return self._extras

    def correct_input(self, unit: nn.Module, fp_in):
        if not self.cfg['dist_correction']:
            return None
        c = self.cfg
        return correct_distribution(unit, fp_in, c['dc_iters'], c['dc_lr'],
                                    c['dc_weight'])

    def extra_loss(self, unit: nn.Module, batch: dict) -> Optional[Tensor]:
        """``pd_weight``·KL(softmax(z_FP/T) ‖ softmax(z_Q/T)), batch mean;
        z_Q: the rest of the network in FP on the unit's quantized output
        (PD-Quant Eq. 6)."""
        if self._extras is None:
            return None
        set_call_indices(unit, batch['index'])
        args, kwargs = batch['args']
        out = unit(*args, **kwargs)
        handle = unit.register_forward_hook(lambda m, a, o: out)
        try:
            with quantization_off(self._model):
                logits = forward_logits(self._model, batch['extra']['inputs'])
        finally:
            handle.remove()
        t = self.cfg['temperature']
        return self.cfg['pd_weight'] * F.kl_div(
            F.log_softmax(logits / t, dim=1),
            F.softmax(batch['extra']['fp_logits'] / t, dim=1),
            reduction='batchmean')
