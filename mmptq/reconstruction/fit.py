"""Fitting one unit: learned rounding (AdaRound), LSQ activation steps,
and the method's own parts (QDrop's drop, PD-Quant's prediction loss)
through the extension points of ``BlockReconstruction``."""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmengine import dist
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from mmptq.nn.modules import QuantWeightMixin
from mmptq.quantizers import (AdaRoundQuantizer, BaseQuantizer,
                              UniformQuantizer)
from .capture import set_call_indices
from .samples import SampleSet

PHASES = ('weights', 'acts', 'joint')


@dataclass
class FitConfig:
    """What to learn and how (see ``BlockReconstruction`` for the keys)."""
    iters: int
    batch_size: int
    phases: Tuple[str, ...]
    w_lr: float
    lr: float
    round_weight: float
    beta: Tuple[float, float]
    warmup: float
    log_interval: int


def rec_loss(out, target) -> Tensor:
    """Σ over the output tensors of ‖ŷ − y‖² summed over dim 1 and averaged
    over the rest (the L2 loss of AdaRound / BRECQ / QDrop's code)."""
    total = 0.0
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
    tgts = [t for t in tree_flatten(target)[0] if isinstance(t, Tensor)]
    for o, t in zip(outs, tgts):
        if not o.is_floating_point():
            continue
        d = (o - t).pow(2)
        total = total + (d.sum(1).mean() if d.dim() > 1 else d.mean())
    return total


def beta_at(step: int, cfg: FitConfig) -> Optional[float]:
    """AdaRound's annealed β: None (no regulariser) during the warm-up
    fraction, then linear from beta[0] to beta[1]."""
    start = cfg.warmup * cfg.iters
    if step < start:
        return None
    t = (step - start) / max(cfg.iters - start, 1)
    return cfg.beta[1] + (cfg.beta[0] - cfg.beta[1]) * (1 - t)


def weighted_layers(unit: nn.Module) -> List[nn.Module]:
    return [m for m in unit.modules() if isinstance(m, QuantWeightMixin)
            and isinstance(m.weight_quantizer, UniformQuantizer)
            and m.weight_quantizer.enabled]


def act_quantizers(unit: nn.Module) -> List[BaseQuantizer]:
    weights = {id(m.weight_quantizer) for m in unit.modules()
               if isinstance(m, QuantWeightMixin)}
    return [m for m in unit.modules() if isinstance(m, BaseQuantizer)
            and id(m) not in weights]


def _to(obj, device):
    return tree_map(lambda t: t.to(device) if isinstance(t, Tensor) else t,
                    obj)


def sync_grads(opts: List[torch.optim.Optimizer]) -> None:
    """Distributed runs: average the gradients over the ranks (each fits on
    its shard of the calibration data), so every rank takes the same step
    and ends with the same parameters."""
    if dist.get_world_size() == 1:
        return
    for opt in opts:
        for group in opt.param_groups:
            for p in group['params']:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op='mean')


class UnitFitter:
    """Reconstruct one unit on its samples with the phases of ``cfg``:

    - 'weights': AdaRound rounding V (Adam, ``w_lr``), activation steps
      fixed. (BRECQ's code fits the rounding with activations FP first;
      here they stay quantized, the condition the rounding is used in);
    - 'acts': activation steps by LSQ (Adam, ``lr``, cosine to 0), weights
      at their final rounding (BRECQ's second step);
    - 'joint': both at once (QDrop).

    Loss: ``method.unit_loss`` (``rec_loss`` but for APHQ-ViT's Hessian
    weighting) + λ·Σ(1 − |2h−1|^β) while rounding is learned
    + ``method.extra_loss``. The step input is ``method.mix_inputs`` of the
    quantized-model and FP-model inputs; each phase runs inside
    ``method.fitting`` of the unit's activation quantizers.
    """

    def __init__(self, unit: nn.Module, cfg: FitConfig,
                 log: Callable[[str], None], method) -> None:
        self.unit, self.cfg, self.log, self.method = unit, cfg, log, method
        self.device = next((p.device for p in unit.parameters()),
                           torch.device('cpu'))

    def fit(self, samples: SampleSet, gen: torch.Generator) -> Dict:
        layers = weighted_layers(self.unit)
        acts = [q for q in act_quantizers(self.unit) if q.enabled]
        learn_acts = [q for q in acts
                      if isinstance(q, UniformQuantizer) and q.calibrated]
        original = {id(m): m.weight_quantizer for m in layers}
        stats = dict(mse_before=self.error(samples))
        try:
            for phase in self.cfg.phases:
                rounding = phase in ('weights', 'joint') and bool(layers)
                steps = phase in ('acts', 'joint') and bool(learn_acts)
                if not (rounding or steps):
                    continue
                if rounding:
                    for m in layers:
                        m.weight_quantizer = AdaRoundQuantizer.from_uniform(
                            original[id(m)], m.weight)
                with self.method.fitting(acts):
                    self._run(phase, samples, gen, layers if rounding else [],
                              learn_acts if steps else [])
                if rounding:
                    self._harden(layers, original)
        finally:
            for m in layers:
                m.weight_quantizer = original[id(m)]
            for q in acts:
                if isinstance(q.scale, nn.Parameter):
                    q.set_qparams(q.scale, q.zero_point)
        stats['mse_after'] = self.error(samples)
        return stats

    @torch.no_grad()
    def error(self, samples: SampleSet, limit: int = 64) -> float:
        """Mean output error of the quantized unit (no drop) over the first
        ``limit`` samples, each whole: ``rec_loss`` plus the method's
        ``extra_loss`` (PD-Quant's prediction difference, whose aim a
        local MSE alone would veto)."""
        total = 0.0
        n = min(samples.count, limit)
        for i in samples.keys[:n]:
            sample = _to(samples.cache.get(i), self.device)
            set_call_indices(self.unit, sample['index'])
            args, kwargs = sample['args']
            total += float(rec_loss(self.unit(*args, **kwargs),
                                    sample['target']))
            extra = self.method.extra_loss(self.unit, sample)
            if extra is not None:
                total += float(extra)
        return total / max(n, 1)

    def _run(self, phase: str, samples: SampleSet, gen: torch.Generator,
             layers: List[nn.Module], acts: List[BaseQuantizer]) -> None:
        cfg = self.cfg
        opts, scheds = [], []
        if layers:
            opts.append(torch.optim.Adam(
                [m.weight_quantizer.alpha for m in layers], lr=cfg.w_lr))
        if acts:
            opt = torch.optim.Adam([q.learn_scale() for q in acts],
                                   lr=cfg.lr)
            opts.append(opt)
            scheds.append(torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=cfg.iters, eta_min=0.0))
        running = 0.0
        for step in range(cfg.iters):
            batch = _to(samples.draw(cfg.batch_size, gen), self.device)
            set_call_indices(self.unit, batch['index'])
            args, kwargs = self.method.mix_inputs(batch['args'], batch['fp'],
                                                  gen)
            out = self.unit(*args, **kwargs)
            rec = self.method.unit_loss(out, batch)
            loss = rec
            beta = beta_at(step, cfg) if layers else None
            if beta is not None:
                loss = loss + cfg.round_weight * sum(
                    m.weight_quantizer.regularizer(beta) for m in layers)
            extra = self.method.extra_loss(self.unit, batch)
            if extra is not None:
                loss = loss + extra
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            sync_grads(opts)
            for opt in opts:
                opt.step()
            for sched in scheds:
                sched.step()
            value = float(rec.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f'reconstruction loss became {value} in phase {phase!r} '
                    f'at iteration {step}: lower lr / w_lr')
            running += value
            if (step + 1) % cfg.log_interval == 0 or step + 1 == cfg.iters:
                n = (step % cfg.log_interval) + 1
                self.log(f'{phase} it {step + 1}/{cfg.iters} rec loss '
                         f'{running / n:.4g} total {float(loss.detach()):.4g}'
                         + ('' if beta is None else f' beta {beta:.1f}'))
                running = 0.0

    @staticmethod
    def _harden(layers: List[nn.Module], original: Dict) -> None:
        """Hard rounding; the weight becomes its quantized value, which the
        original uniform quantizer maps to itself (a point of its grid)."""
        with torch.no_grad():
            for m in layers:
                ada = m.weight_quantizer
                ada.soft = False
                m.weight.copy_(ada(m.weight))
                m.weight_quantizer = original[id(m)]
