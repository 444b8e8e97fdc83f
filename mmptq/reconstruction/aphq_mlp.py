"""APHQ-ViT's MLP Reconstruction (Wu et al., CVPR 2025, arXiv:2504.02508,
Sec. 3.3; reference: GoatWu/APHQ-ViT ``utils/mlp_recon.py`` and
``Object-Detection/tools/quant_utils/mlp_recon.py``): **a change of the
model**, before quantization. In each selected MLP, GELU is replaced by
ReLU, and the MLP's Linear weights and biases W are fitted, in floating
point, so that the ReLU MLP f_W reproduces the original GELU MLP g on the
calibration data:

    min_W  L_APH(f_W(x), g(x)) + λ · L_APH(f_W^ub(x), g(x))

with L_APH(ŷ, y) = Σᵢ |H̄ᵢᵢ| (ŷᵢ − yᵢ)² the average-perturbation-Hessian
weighted error of :mod:`.aphq` (H̄ at the MLP's output, of the FP model),
and f_W^ub the same MLP with its hidden activation clipped to [0, ub], ub
the ``pct`` percentile of the positive GELU outputs (λ = 2, pct = 0.999:
the reference's ``weight`` and ``pct``), so that the fit prefers hidden
activations a uniform 4-bit quantizer can represent. Post-ReLU hidden
activations are non-negative, without GELU's dense negative part near 0.
The inputs and targets are the original (all-GELU) model's, as in the
reference. Adam, cosine schedule to 0 (lr 4e-5, 20,000 iterations, one
calibration batch per step: the reference's).

The model is a different one afterwards (another activation function and
other weights; the paper's COCO tables give its FP accuracy separately).
It is an opt-in model transform (``MODEL_TRANSFORMS``), off unless
``quant_cfg.transforms`` names it (preset ``aphq-vit_w4a4_mlp-recon``). It
lives here, not in ``mmptq.transforms``, because it uses the APH estimate
of :mod:`.aphq` (the two packages are one layer and do not import each
other); it has :class:`mmptq.transforms.BaseTransform`'s interface.

Like the block reconstruction, an MLP whose fit did not lower its output
error on held-out calibration calls (relative to the unfitted swap) keeps
the swap's weights, and that is logged.
"""
import copy
import math
import re
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from mmptq.registry import MODEL_TRANSFORMS
from .aphq import aph_loss, average_hessian, perturbed_grads, task_forward
from .block import holdout_count


def find_mlps(model: nn.Module, pattern: str) -> List[Tuple[str, str]]:
    """``(mlp, activation)`` names: every module whose name matches
    ``pattern`` (``re.fullmatch``) and that holds exactly one ``nn.GELU``
    and at least two ``nn.Linear`` (the activation's name is relative to
    the MLP)."""
    found = []
    for name, mod in model.named_modules():
        if not name or not re.fullmatch(pattern, name):
            continue
        gelus = [n for n, m in mod.named_modules() if isinstance(m, nn.GELU)]
        linears = [m for m in mod.modules() if isinstance(m, nn.Linear)]
        if len(gelus) == 1 and len(linears) >= 2:
            found.append((name, gelus[0]))
    return found


def swap_to_relu(mlp: nn.Module, act: str) -> None:
    """Replace the activation ``act`` (a submodule name of ``mlp``) by
    ``nn.ReLU``."""
    parent, _, leaf = act.rpartition('.')
    setattr(mlp.get_submodule(parent) if parent else mlp, leaf, nn.ReLU())


def positive_percentile(values: List[Tensor], pct: float,
                        limit: int = 1 << 24) -> float:
    """The ``pct`` quantile of the positive elements of ``values`` (the
    reference's rank ⌈n·pct⌉, 1-based); above ``limit`` elements, every
    k-th is used."""
    flat = torch.cat([v.reshape(-1) for v in values])
    flat = flat[flat > 0]
    if flat.numel() == 0:
        return 0.0
    if flat.numel() > limit:
        flat = flat[::math.ceil(flat.numel() / limit)]
    k = min(max(math.ceil(flat.numel() * pct), 1), flat.numel())
    return float(flat.kthvalue(k).values)


def record_mlp(model: nn.Module, mlp: nn.Module, act: str,
               batches: list) -> Tuple[list, List[Tensor], int]:
    """The MLP's calls over ``batches`` (the task forward, no grad): per
    call ``(args, kwargs, output)``, detached; the hidden activations (the
    GELU's outputs); and the number of calls on the first batch."""
    calls: list = []
    hidden: List[Tensor] = []
    pending: list = []

    def pre(mod, args, kwargs):
        pending.append((args, kwargs))

    def post(mod, args, kwargs, out):
        a, k = pending.pop()
        calls.append((a, k, out))

    handles = [mlp.register_forward_pre_hook(pre, with_kwargs=True),
               mlp.register_forward_hook(post, with_kwargs=True),
               mlp.get_submodule(act).register_forward_hook(
                   lambda m, a, out: hidden.append(out.detach()))]
    per_batch = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                task_forward(model, batch)
                if i == 0:
                    per_batch = len(calls)
    finally:
        for h in handles:
            h.remove()
    return calls, hidden, per_batch


def output_error(mlp: nn.Module, calls: list) -> float:
    """Mean squared error of ``mlp`` on ``calls`` against their recorded
    outputs (over all elements of the floating output tensors)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for args, kwargs, target in calls:
            outs = tree_flatten(mlp(*args, **kwargs))[0]
            for o, t in zip(outs, tree_flatten(target)[0]):
                if isinstance(o, Tensor) and o.is_floating_point():
                    total += float((o - t).double().pow(2).sum())
                    count += o.numel()
    return total / max(count, 1)


@MODEL_TRANSFORMS.register_module()
class APHQMLPReconstruction:
    """GELU → ReLU in the selected MLPs, refitted to the GELU MLPs' outputs
    (module doc). Runs at ``before_wrap`` on the FP model with the
    calibration batches; a quantized checkpoint records the MLPs, and
    :meth:`restore` swaps their activation before it loads.

    Args:
        mlps: regex (``re.fullmatch``) of the MLP modules' names; those
            holding exactly one ``nn.GELU`` and two or more ``nn.Linear``
            are reconstructed (mmcv / mmpretrain ``FFN`` as ``...ffn``,
            timm-style ``...mlp``).
        iters: Adam steps per MLP (one calibration batch per step).
        lr: Adam's learning rate (cosine to 0 over ``iters``).
        clip_weight: λ, the weight of the clipped term.
        pct: percentile of the positive GELU outputs that gives ub.
        hessian: weight the error by the APH estimate (False: plain
            squared error).
        perturb: δ of the APH estimate.
        temperature: T of the classifier's KL in the APH estimate.
        holdout: fraction of the calibration batches held out to compare
            the fitted MLP with the unfitted swap (at least one when there
            are two or more batches; with one, it is compared on it).
        seed: order of the batches in the fit.
    """

    def __init__(self,
                 mlps: str = r'(.*\.)?(ffn|mlp)',
                 iters: int = 20000,
                 lr: float = 4e-5,
                 clip_weight: float = 2.0,
                 pct: float = 0.999,
                 hessian: bool = True,
                 perturb: float = 1e-3,
                 temperature: float = 20.0,
                 holdout: float = 0.25,
                 seed: int = 0) -> None:
        if iters < 0 or not lr > 0 or not 0 < pct <= 1 or \
                not 0 <= holdout < 1:
            raise ValueError(
                f'APHQMLPReconstruction: iters={iters!r} (>= 0), lr={lr!r} '
                f'(> 0), pct={pct!r} (in (0, 1]), holdout={holdout!r} (in '
                f'[0, 1)) out of range')
        self.mlps, self.iters, self.lr = mlps, iters, lr
        self.clip_weight, self.pct, self.hessian = clip_weight, pct, hessian
        self.perturb, self.temperature = perturb, temperature
        self.holdout, self.seed = holdout, seed
        self.rows: List[dict] = []

    def before_wrap(self, model: nn.Module, ctx) -> None:
        batches = list(ctx.batches)
        if not batches:
            raise ValueError('APHQMLPReconstruction needs the calibration '
                             'batches (TransformContext.batches)')
        targets = find_mlps(model, self.mlps)
        if not targets:
            print_log(f'mmptq: APHQMLPReconstruction: no MLP with one GELU '
                      f'matches {self.mlps!r}', logger='current', level=30)
        refs = None
        if self.hessian:
            with torch.no_grad():
                refs = [task_forward(model, b) for b in batches]
        fitted: Dict[str, nn.Module] = {}
        self.rows = []
        for i, (name, act) in enumerate(targets):
            mlp = model.get_submodule(name)
            new, row = self.reconstruct(model, mlp, act, batches, refs)
            fitted[name] = new
            self.rows.append(dict(row, transform='APHQMLPReconstruction',
                                  target=name, consumers=[f'{name}.{act}']))
            print_log(f'mmptq: MLP reconstruction [{i + 1}/{len(targets)}] '
                      f'{name}: GELU -> ReLU, ub {row["ub"]:.4g}, held-out '
                      f'output error {row["error_swap"]:.4g} (swapped) -> '
                      f'{row["error_fit"]:.4g} (fitted)'
                      + (f'; {row["reason"]}' if row['reason'] else ''),
                      logger='current')
        # every MLP was fitted on the original model's data: swap at the end
        # (in place: the modules stay the objects the model was traced with)
        for (name, act) in targets:
            mlp = model.get_submodule(name)
            mlp.load_state_dict(fitted[name].state_dict())
            swap_to_relu(mlp, act)

    def reconstruct(self, model: nn.Module, mlp: nn.Module, act: str,
                    batches: list, refs: Optional[list]
                    ) -> Tuple[nn.Module, dict]:
        """One MLP: a ReLU copy fitted to its GELU calls; the copy and its
        summary row (mode 'fitted', or 'swapped' when the fit did not lower
        the held-out error: then the copy keeps the original weights)."""
        calls, hidden, per_batch = record_mlp(model, mlp, act, batches)
        ub = positive_percentile(hidden, self.pct)
        del hidden
        weights: List[Optional[list]] = [None] * len(calls)
        if self.hessian and per_batch:
            aph = average_hessian(perturbed_grads(
                model, mlp, batches, per_batch, refs, self.perturb,
                self.temperature))
            if len(aph) == len(calls):
                weights = aph
        n_held = holdout_count(len(batches), self.holdout)
        n_fit = (len(batches) - n_held) * per_batch
        held = calls[n_fit:] or calls
        new = copy.deepcopy(mlp)
        swap_to_relu(new, act)
        new.eval()
        error_swap = output_error(new, held)
        start = {k: v.clone() for k, v in new.state_dict().items()}
        self._fit(new, act, calls[:n_fit], weights[:n_fit], ub)
        error_fit = output_error(new, held)
        mode, reason = 'fitted', ''
        if not error_fit < error_swap:
            new.load_state_dict(start)
            mode = 'swapped'
            reason = (f'the fit did not lower the held-out error '
                      f'({error_swap:.4g} -> {error_fit:.4g}): original '
                      f'weights kept')
        return new, dict(mode=mode, reason=reason, ub=ub,
                         error_swap=error_swap, error_fit=error_fit,
                         iters=self.iters, held_out_calls=len(held))

    def _fit(self, new: nn.Module, act: str, calls: list, weights: list,
             ub: float) -> None:
        """Adam on the Linear weights and biases of ``new`` (module doc)."""
        if not calls or self.iters == 0:
            return
        params = [p for m in new.modules() if isinstance(m, nn.Linear)
                  for p in m.parameters()]
        frozen = [p for p in new.parameters()
                  if all(p is not q for q in params)]
        for p in frozen:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=self.iters, eta_min=0.)
        clip = dict(on=False)

        def clamp(mod, args, out):
            return out.clamp(0, ub) if clip['on'] else out

        handle = new.get_submodule(act).register_forward_hook(clamp)
        gen = torch.Generator().manual_seed(self.seed)
        order: List[int] = []
        try:
            with torch.enable_grad():
                for _ in range(self.iters):
                    if not order:
                        order = torch.randperm(len(calls),
                                               generator=gen).tolist()
                    k = order.pop()
                    args, kwargs, target = calls[k]
                    opt.zero_grad()
                    loss = aph_loss(new(*args, **kwargs), target, weights[k])
                    if self.clip_weight:
                        clip['on'] = True
                        loss = loss + self.clip_weight * aph_loss(
                            new(*args, **kwargs), target, weights[k])
                        clip['on'] = False
                    loss.backward()
                    opt.step()
                    sched.step()
        finally:
            handle.remove()
            for p in new.parameters():
                p.requires_grad_(True)
                p.grad = None

    def before_calibration(self, model: nn.Module, ctx) -> None:
        pass

    def after_calibration(self, model: nn.Module, ctx) -> None:
        pass

    def first_pass_needs(self) -> None:
        """The whole first calibration pass (it runs before wrapping)."""
        return None

    @classmethod
    def restore(cls, model: nn.Module, row: dict) -> None:
        """Before a quantized checkpoint loads: the recorded MLP's GELU
        becomes a ReLU (the checkpoint holds the fitted weights)."""
        mlp_name = row['target']
        act = row['consumers'][0][len(mlp_name) + 1:]
        swap_to_relu(model.get_submodule(mlp_name), act)
