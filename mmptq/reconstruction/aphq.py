"""APHQ-ViT (Wu et al., CVPR 2025, "APHQ-ViT: Post-Training Quantization
with Average Perturbation Hessian Based Reconstruction for Vision
Transformers"): QDrop's block reconstruction whose loss weights each
element of the unit's output error by the average perturbation Hessian
(APH, Sec. 3.2) of a task loss L with respect to that output O:

    H(O)ᵢᵢ ≈ (∂L/∂Oᵢ (O + δ·1) − ∂L/∂Oᵢ (O − δ·1)) / (2δ)

(the mean value theorem on the gradient; one forward and backward pass
of the FP model per sign, the whole output shifted by ±δ), averaged over
the N calibration samples, H̄ᵢᵢ = (1/N) Σₙ H(O⁽ⁿ⁾)ᵢᵢ, and the unit loss

    L_APH = Σᵢ |H̄ᵢᵢ| (Ôᵢ − Oᵢ)²

replaces QDrop's ‖Ô − O‖². L compares the FP model's prediction on the
perturbed output with its unperturbed one: for a classifier (``(N, C)``
logits of the tensor forward) KL(softmax(z_FP/T) ‖ softmax(z/T)), for
other models (detectors' tensor outputs) ½ Σ ‖z − z_FP‖² / numel. |H̄|
is normalised to mean 1 over each output tensor of the unit, so the loss
keeps the scale of the MSE it replaces (and of AdaRound's λ); where it
is 0 everywhere (the logits: a shift of all of them leaves the softmax
unchanged) the weight is 1, the MSE.

The paper's MLP Reconstruction (GELU replaced by ReLU in the MLPs, a
different model) is not part of this class: it is the opt-in model
transform :class:`~.aphq_mlp.APHQMLPReconstruction` (docs/methods/aphq-vit.md).
"""
import re
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from mmptq.registry import RECONSTRUCTIONS
from .capture import quantization_off
from .qdrop import QDropReconstruction
from .samples import SampleSet


def task_forward(model: nn.Module, batch):
    """The differentiable prediction of ``model`` on a calibration batch:
    ``model(inputs, data_samples, mode='tensor')`` after the data
    preprocessor for OpenMMLab models, ``model(batch)`` otherwise."""
    if hasattr(model, 'data_preprocessor'):
        data = model.data_preprocessor(batch, False)
        return model(data['inputs'], data.get('data_samples'), mode='tensor')
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def task_loss(out, ref, temperature: float) -> Tensor:
    """L(z; z_FP): KL(softmax(z_FP/T) ‖ softmax(z/T)) (batch mean) for one
    ``(N, C)`` logits tensor; otherwise ½ Σ over the floating tensors of
    the prediction of mean (z − z_FP)² (tensors whose shape changed, e.g.
    another number of proposals, are left out).

    Args:
        out: the prediction on the perturbed unit output.
        ref: the FP prediction (no perturbation).
        temperature: T of the classifier's KL.
    """
    if isinstance(out, Tensor) and out.dim() == 2:
        return F.kl_div(F.log_softmax(out / temperature, dim=1),
                        F.softmax(ref / temperature, dim=1),
                        reduction='batchmean')
    total = 0.0
    for a, b in zip(tree_flatten(out)[0], tree_flatten(ref)[0]):
        if isinstance(a, Tensor) and a.is_floating_point() and \
                a.shape == b.shape and a.numel():
            total = total + 0.5 * (a - b).pow(2).mean()
    return total


def perturbed_grads(model: nn.Module, unit: nn.Module, batches: list,
                    calls: int, refs: list, delta: float,
                    temperature: float) -> List[List[Tensor]]:
    """Per recorded call of ``unit`` (the first ``calls`` of each batch, in
    order), the finite difference (g⁺ − g⁻) / (2δ) of the gradients of
    :func:`task_loss` with respect to each floating output tensor of the
    call, at O ± δ·1 (the FP model, quantization off).

    Args:
        model: the model (its quantizers are switched off here).
        unit: the unit whose output is perturbed.
        batches: the calibration batches.
        calls: calls of ``unit`` recorded per batch.
        refs: the FP prediction of each batch (:func:`task_forward`).
        delta: the perturbation δ.
        temperature: T of the classifier's KL.
    """
    grads: Dict[float, List[List[Tensor]]] = {}
    for sign in (1.0, -1.0):
        found: List[List[Tensor]] = []
        state = dict(count=0)
        # id of the copy passed on -> (the copy, kept alive so that its id
        # is not reused, the leaf's id)
        passed: Dict[int, tuple] = {}

        def hook(mod, args, output):
            if state['count'] >= calls:
                return output
            state['count'] += 1
            leaves, spec = tree_flatten(output)
            slot: List[Optional[Tensor]] = []
            out = []
            for leaf in leaves:
                if isinstance(leaf, Tensor) and leaf.is_floating_point():
                    leaf = (leaf.detach() + sign * delta).requires_grad_(True)
                    slot.append(leaf)
                    # a non-leaf copy: the next op may be in place
                    # (mmdet's RoI heads: ReLU(inplace=True))
                    copy = leaf.clone()
                    passed[id(copy)] = (copy, id(leaf))
                    leaf = copy
                out.append(leaf)
            found.append(slot)
            return tree_unflatten(out, spec)

        handle = unit.register_forward_hook(hook)
        try:
            with torch.enable_grad(), quantization_off(model):
                for batch, ref in zip(batches, refs):
                    state['count'] = 0
                    passed.clear()
                    start = len(found)
                    pred = task_forward(model, batch)
                    loss = task_loss(pred, ref, temperature)
                    leaves = [t for slot in found[start:] for t in slot]
                    final = {passed.get(id(t), (None, id(t)))[1]
                             for t in tree_flatten(pred)[0]}
                    if not torch.is_tensor(loss) or not loss.requires_grad:
                        got = [torch.zeros_like(t) for t in leaves]
                    else:
                        got = torch.autograd.grad(loss, leaves,
                                                  allow_unused=True)
                        got = [torch.zeros_like(t) if g is None else g
                               for t, g in zip(leaves, got)]
                    # the prediction itself (the logits): a shift of all
                    # of them leaves the softmax unchanged, H·1 = 0 up to
                    # float noise; weight 1 (the MSE) there
                    got = [torch.zeros_like(g) if id(t) in final else g
                           for t, g in zip(leaves, got)]
                    k = 0
                    for slot in found[start:]:
                        slot[:] = [g.detach().cpu() for g in
                                   got[k:k + len(slot)]]
                        k += len(slot)
        finally:
            handle.remove()
        grads[sign] = found
    return [[(p - m) / (2 * delta) for p, m in zip(gp, gm)]
            for gp, gm in zip(grads[1.0], grads[-1.0])]


def average_hessian(per_call: List[List[Tensor]]) -> List[List[Tensor]]:
    """APH's average over samples: |H| of every row (first dimension: the
    images, or tokens rows, of a call) averaged over all rows of the
    calls whose output has the same trailing shape, expanded back to each
    call's rows, then normalised to mean 1 over all elements of each
    output tensor (the j-th of every call). An estimate that is 0
    everywhere (an output the task loss ignores, or logits: a shift of
    all logits leaves the softmax unchanged) gives weight 1, the MSE.

    Args:
        per_call: per call, the H estimate of each output tensor.
    """
    sums: Dict[tuple, List] = {}
    for call in per_call:
        for j, h in enumerate(call):
            key = (j, tuple(h.shape[1:]))
            acc = sums.setdefault(key, [0.0, 0])
            rows = h.shape[0] if h.dim() else 1
            acc[0] = acc[0] + h.abs().reshape(rows, *h.shape[1:]).sum(0)
            acc[1] += rows
    out: List[List[Tensor]] = []
    totals: Dict[int, List[float]] = {}
    for call in per_call:
        row = []
        for j, h in enumerate(call):
            acc = sums[(j, tuple(h.shape[1:]))]
            mean = (acc[0] / acc[1]).expand_as(h) if h.dim() else \
                acc[0] / acc[1]
            row.append(mean)
            total = totals.setdefault(j, [0.0, 0])
            total[0] += float(mean.sum())
            total[1] += mean.numel()
        out.append(row)
    result = []
    for row in out:
        scaled = []
        for j, h in enumerate(row):
            total, count = totals[j]
            scaled.append((h * (count / total)).contiguous() if total > 0
                          else torch.ones_like(h))
        result.append(scaled)
    return result


def aph_loss(out, target, weights) -> Tensor:
    """Σ over the output tensors of (w ⊙ (ŷ − y)²) summed over dim 1 and
    averaged over the rest: ``rec_loss`` with the APH weights ``w`` (equal
    to it for w ≡ 1).

    Args:
        out: the quantized unit's output.
        target: the FP output.
        weights: one weight tensor per floating output tensor, or None.
    """
    total = 0.0
    outs = [t for t in tree_flatten(out)[0]
            if isinstance(t, Tensor) and t.is_floating_point()]
    tgts = [t for t in tree_flatten(target)[0]
            if isinstance(t, Tensor) and t.is_floating_point()]
    for k, (o, t) in enumerate(zip(outs, tgts)):
        d = (o - t).pow(2)
        if weights is not None:
            d = d * weights[k].to(d.device)
        total = total + (d.sum(1).mean() if d.dim() > 1 else d.mean())
    return total


@RECONSTRUCTIONS.register_module()
class APHQReconstruction(QDropReconstruction):
    """APHQ-ViT's block reconstruction: QDrop (rounding and activation
    steps jointly, drop p = 0.5) with the APH-weighted loss (module doc).

    Args (over QDrop's):
        perturb: δ of the perturbation (the paper's 1e-6 is below float32
            resolution for outputs of order 1; its detection code uses
            1e-3, the default here).
        temperature: T of the classifier's KL (the reference code's 20).
        aph_blocks: regex (``re.fullmatch``) of the units whose loss is
            APH-weighted; others use the plain MSE (None: all).
    """
    DEFAULTS = dict(QDropReconstruction.DEFAULTS, perturb=1e-3,
                    temperature=20.0, aph_blocks=None)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not self.cfg['perturb'] > 0:
            raise ValueError(f'quant_cfg.reconstruction.perturb='
                             f'{self.cfg["perturb"]!r} must be > 0')
        if not self.cfg['temperature'] > 0:
            raise ValueError(f'quant_cfg.reconstruction.temperature='
                             f'{self.cfg["temperature"]!r} must be > 0')

    def prepare(self, model: nn.Module, batches: list) -> None:
        """The FP prediction of every calibration batch (L's reference)."""
        self._model = model
        with torch.no_grad(), quantization_off(model):
            self._refs = [task_forward(model, b) for b in batches]

    def _samples(self, model, unit, name, calls, batches, run,
                 cache) -> SampleSet:
        """QDrop's samples, each carrying its APH weights as ``extra``."""
        samples = super()._samples(model, unit, name, calls, batches, run,
                                   cache)
        pattern = self.cfg['aph_blocks']
        if pattern is not None and not re.fullmatch(pattern, name):
            return samples
        hessian = average_hessian(perturbed_grads(
            model, unit, batches, calls, self._refs, self.cfg['perturb'],
            self.cfg['temperature']))
        for i in samples.keys:
            sample = cache.get(i)
            targets = [t.shape for t in tree_flatten(sample['target'])[0]
                       if isinstance(t, Tensor) and t.is_floating_point()]
            if i < len(hessian) and targets == [h.shape for h in hessian[i]]:
                cache.put(i, dict(sample, extra=dict(aph=hessian[i])))
            # else (e.g. RoIs of other proposals): the plain MSE
        return SampleSet(cache, samples.count)

    def unit_loss(self, out, batch: dict) -> Tensor:
        extra = batch.get('extra')
        weights = extra.get('aph') if isinstance(extra, dict) else None
        return aph_loss(out, batch['target'], weights)
