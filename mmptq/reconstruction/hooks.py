"""Block reconstruction as mmengine hooks of the calibration loop.

``BlockReconstruction`` runs at ``after_calibration`` (observers have set
every step size; nothing is frozen yet) and reconstructs the model unit by
unit in forward order (``find_units``): for unit k it records, over the
calibration batches, the unit's FP-model input and output and its
quantized-model input (earlier units already reconstructed), then fits
the unit (``UnitFitter``). Records live in a ``RecordCache`` that spills
to ``work_dir`` past ``cache_budget_mb``. After each unit its state is
saved in ``work_dir/reconstruction/<fingerprint>`` (removed when the run
completes); a killed run started again with the same model, data and
settings resumes at the next unit and ends with the same parameters
(sampling and QDrop masks are seeded per unit from ``seed``).

The methods are presets of this hook: ``AdaRoundReconstruction``,
``BRECQReconstruction``, ``QDropReconstruction``,
``PDQuantReconstruction``.
"""
import hashlib
import json
import os
import os.path as osp
import re
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.utils import ProgressBar
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_flatten

from mmptq.quantizers import BaseQuantizer
from mmptq.registry import HOOKS, nearest_names
from .cache import RecordCache
from .capture import (call_order, capture, quantization_off,
                      set_call_indices)
from .fit import PHASES, FitConfig, UnitFitter, rec_loss
from .partition import find_units
from .samples import SampleSet

BASE_DEFAULTS: Dict[str, Any] = dict(
    iters=20000,
    batch_size=32,
    phases=('joint', ),
    w_lr=1e-3,
    lr=4e-5,
    drop_prob=0.0,
    round_weight=0.01,
    beta=(20.0, 2.0),
    warmup=0.2,
    pd_weight=0.0,
    temperature=4.0,
    match_tol=0.5,
    dist_correction=False,
    dc_iters=500,
    dc_lr=1e-3,
    dc_weight=0.02,
    layerwise=False,
    partition=None,
    blocks=None,
    cache_budget_mb=4096,
    resume=True,
    seed=0,
    log_interval=None,
    work_dir=None,
)


def forward_logits(model: nn.Module, inputs: Tensor) -> Tensor:
    """Class logits of a classifier: ``model(inputs, mode='tensor')`` for
    OpenMMLab models (after the data preprocessor), ``model(inputs)``
    otherwise."""
    if hasattr(model, 'data_preprocessor'):
        out = model(inputs, mode='tensor')
    else:
        out = model(inputs)
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise ValueError(
            f'PD-Quant\'s prediction loss needs a classifier whose tensor '
            f'forward returns (N, classes) logits; this model returns '
            f'{type(out).__name__}. Use QDropReconstruction (or '
            f'pd_weight=0) for detectors and segmentors')
    return out


def model_inputs(model: nn.Module, batch) -> Tensor:
    """The network input of a calibration batch."""
    if hasattr(model, 'data_preprocessor'):
        return model.data_preprocessor(batch, False)['inputs']
    if not isinstance(batch, Tensor):
        raise ValueError('PD-Quant needs tensor batches for a plain module')
    return batch


def input_gap(fp, q) -> float:
    """Relative distance ‖x_q − x_fp‖² / ‖x_fp‖² of two recorded inputs
    (inf when their structure or shapes differ)."""
    la, sa = tree_flatten(fp)
    lb, sb = tree_flatten(q)
    if sa != sb:
        return float('inf')
    num = den = 0.0
    for x, y in zip(la, lb):
        if not isinstance(x, Tensor):
            if x != y:
                return float('inf')
            continue
        if x.shape != y.shape:
            return float('inf')
        if x.is_floating_point():
            num += float((x - y).pow(2).sum())
            den += float(x.pow(2).sum())
    return num / max(den, 1e-30)


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


class ReconstructionState:
    """Progress of one reconstruction run in ``root`` (a directory named
    after the run's fingerprint: model, calibration state and settings):
    ``progress.json`` (units done) and one state dict per unit. A run
    with another fingerprint uses another directory; ``resume=False``
    starts over."""

    def __init__(self, root: str, resume: bool) -> None:
        self.root = root
        self.done: List[str] = []
        path = osp.join(root, 'progress.json')
        found = osp.exists(path)
        if found and resume:
            with open(path) as f:
                self.done = json.load(f)['done']
        dist.barrier()  # every rank has read before anything is removed
        if found and not resume and dist.is_main_process():
            shutil.rmtree(root)
        os.makedirs(root, exist_ok=True)
        dist.barrier()

    def _unit_path(self, name: str) -> str:
        return osp.join(self.root, f'{name}.pth')

    def load(self, name: str, unit: nn.Module) -> None:
        state = torch.load(self._unit_path(name), weights_only=True)
        unit.load_state_dict(state)

    def save(self, name: str, unit: nn.Module) -> None:
        """Written by the main process (ranks hold the same state)."""
        self.done.append(name)
        if dist.is_main_process():
            tmp = self._unit_path(name) + '.tmp'
            torch.save(unit.state_dict(), tmp)
            os.replace(tmp, self._unit_path(name))
            tmp = osp.join(self.root, 'progress.json.tmp')
            with open(tmp, 'w') as f:
                json.dump(dict(done=self.done), f)
            os.replace(tmp, osp.join(self.root, 'progress.json'))
        dist.barrier()


@HOOKS.register_module()
class BlockReconstruction(Hook):
    """Reconstruct the quantized model unit by unit (see module doc).

    Args (defaults per method in ``DEFAULTS``):
        iters: iterations per unit (and per phase).
        batch_size: rows per minibatch (images, or RoIs for RoI heads).
        phases: sequence of 'weights' (AdaRound rounding), 'acts' (LSQ
            activation steps) and 'joint' (both).
        w_lr / lr: Adam learning rates of the rounding variables and of
            the activation steps (cosine-annealed to 0).
        drop_prob: QDrop's probability of keeping an activation FP while
            fitting (also mixes FP-model inputs into the unit input).
        round_weight, beta, warmup: AdaRound's λ, β schedule (start, end)
            and the warm-up fraction without the regulariser.
        match_tol: a recorded FP-model input is the twin of the quantized
            one when their shapes agree and ‖x_q − x_fp‖²/‖x_fp‖² is at
            most this; otherwise (RoI heads: the quantized model's
            proposals are other boxes; measured gaps 1.05-1.4 there,
            below 0.06 in backbone, neck and RPN of the demo Mask R-CNN
            at W4A4) the target is the FP unit on the quantized input.
        pd_weight, temperature: PD-Quant's prediction-difference loss
            weight (1/λ_r) and T; needs a classifier.
        dist_correction, dc_iters, dc_lr, dc_weight: PD-Quant's
            distribution correction of the FP input of units with BN.
        layerwise: every quantized op is a unit (AdaRound).
        partition: module-name regexes that are units (over the rules).
        blocks: regex (``re.fullmatch``): only matching units are
            reconstructed, the others keep their calibration.
        cache_budget_mb: RAM for recorded inputs/outputs; more goes to
            ``work_dir/reconstruction/cache``.
        resume: continue a run found in ``work_dir`` (False: start over).
        seed: seed of sampling and QDrop masks.
        log_interval: iterations between log lines (default iters / 5).
        work_dir: where state and spilled records go (default: the
            runner's work_dir).
    """

    priority = 'NORMAL'
    DEFAULTS: Dict[str, Any] = {}

    def __init__(self, **kwargs) -> None:
        cfg = {**BASE_DEFAULTS, **self.DEFAULTS}
        for key in kwargs:
            if key not in cfg:
                raise ValueError(
                    f'unknown key {key!r} in quant_cfg.reconstruction '
                    f'({type(self).__name__}); valid keys: '
                    f'{nearest_names(key, cfg)}')
        cfg.update(kwargs)
        cfg['phases'] = tuple(cfg['phases'])
        cfg['beta'] = tuple(cfg['beta'])
        bad = [p for p in cfg['phases'] if p not in PHASES]
        if bad or not cfg['phases']:
            raise ValueError(f'quant_cfg.reconstruction.phases={cfg["phases"]}'
                             f': use a sequence of {PHASES}')
        for key in ('iters', 'batch_size'):
            if not isinstance(cfg[key], int) or cfg[key] < 1:
                raise ValueError(f'quant_cfg.reconstruction.{key}='
                                 f'{cfg[key]!r} must be a positive integer')
        if not 0.0 <= cfg['drop_prob'] < 1.0:
            raise ValueError(f'drop_prob={cfg["drop_prob"]} must be in [0, 1)')
        self.cfg = cfg

    def fit_config(self) -> FitConfig:
        c = self.cfg
        return FitConfig(
            iters=c['iters'], batch_size=c['batch_size'], phases=c['phases'],
            w_lr=c['w_lr'], lr=c['lr'], drop_prob=c['drop_prob'],
            round_weight=c['round_weight'], beta=c['beta'],
            warmup=c['warmup'], pd_weight=c['pd_weight'],
            temperature=c['temperature'],
            log_interval=c['log_interval'] or max(c['iters'] // 5, 1))

    # -- the stage ------------------------------------------------------
    def after_calibration(self, runner, model: nn.Module,
                          calib_data: Sequence, run_batch: Callable,
                          summary=None) -> List[dict]:
        """Reconstruct ``model`` on ``calib_data`` (fed with
        ``run_batch``); returns one row per unit (also appended to
        ``summary.reconstruction``)."""
        c = self.cfg
        work_dir = c['work_dir'] or getattr(runner, 'work_dir', None)
        if work_dir is None:
            work_dir = tempfile.mkdtemp(prefix='mmptq_recon_')
            print_log(f'mmptq: no work_dir: reconstruction state goes to '
                      f'{work_dir} (a run cannot resume)', logger='current',
                      level=30)
        batches = list(calib_data)
        units = find_units(model, c['partition'], c['layerwise'])
        order, counts = call_order(model, units, batches[0], run_batch)
        for name in units:
            if name not in order:
                print_log(f'mmptq: reconstruction unit {name} did not run '
                          f'on calibration data; it keeps its calibration',
                          logger='current', level=30)
        if c['blocks'] is not None:
            order = [n for n in order if re.fullmatch(c['blocks'], n)]
            if not order:
                raise ValueError(f'quant_cfg.reconstruction.blocks='
                                 f'{c["blocks"]!r} matches no unit; units: '
                                 f'{units[:10]}...')
        key = [self._fingerprint(model, order, len(batches))]
        dist.broadcast_object_list(key)  # the main process names the run
        root = osp.join(work_dir, 'reconstruction', key[0])
        state = ReconstructionState(root, c['resume'])
        predict = extra = None
        if c['pd_weight'] > 0:
            predict, extra = self._prediction(model, batches)
        cache = RecordCache(c['cache_budget_mb'],
                            osp.join(root, f'cache{dist.get_rank()}'))
        rows = []
        grads = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            for k, name in enumerate(order):
                unit = model.get_submodule(name)
                if name in state.done:
                    state.load(name, unit)
                    print_log(f'mmptq: reconstruction [{k + 1}/{len(order)}] '
                              f'{name}: resumed from {root}',
                              logger='current')
                    continue
                rows.append(self._unit(model, unit, name, k, len(order),
                                       counts[name], batches, run_batch,
                                       cache, predict, extra))
                state.save(name, unit)
        finally:
            cache.clear()
            for p, g in zip(model.parameters(), grads):
                p.requires_grad_(g)
        dist.barrier()
        if dist.is_main_process():
            shutil.rmtree(root)  # done: nothing to resume
        if summary is not None:
            summary.reconstruction.extend(rows)
        return rows

    def _unit(self, model, unit, name, k, total, calls, batches, run, cache,
              predict, extra) -> dict:
        c = self.cfg
        start = time.perf_counter()
        prefix = f'mmptq: reconstruction [{k + 1}/{total}] {name}'
        print_log(f'{prefix}: recording inputs on {len(batches)} batches',
                  logger='current')
        device = next((p.device for p in model.parameters()),
                      torch.device('cpu'))
        devices = [device] if device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(c['seed'] * 100003 + k)
            gen = torch.Generator().manual_seed(c['seed'] * 100003 + k)
            samples = self._samples(model, unit, name, calls, batches, run,
                                    cache, extra if predict else None)
            fitter = UnitFitter(
                unit, self.fit_config(),
                lambda msg: print_log(f'{prefix}: {msg}', logger='current'),
                predict=(lambda inputs, out: predict(unit, inputs, out))
                if predict else None)
            stats = fitter.fit(samples, gen)
        row = dict(unit=name, rows=len(samples), spilled=cache.spilled,
                   cache_mb=round(cache.used / 2**20, 1),
                   mse_before=stats['mse_before'],
                   mse_after=stats['mse_after'],
                   seconds=round(time.perf_counter() - start, 2))
        cache.clear()
        print_log(f'{prefix}: done in {row["seconds"]:.1f} s, output error '
                  f'{stats["mse_before"]:.4g} (calibrated) → '
                  f'{stats["mse_after"]:.4g}; records: {row["cache_mb"]} MiB '
                  f'in RAM, {row["spilled"]} on disk', logger='current')
        return row

    def _samples(self, model, unit, name, calls, batches, run, cache,
                 extra) -> SampleSet:
        """Record and pair the FP and quantized calls of ``unit``."""
        c = self.cfg
        with quantization_off(model):
            n_fp = capture(model, unit, calls, batches, run,
                           lambda i, r: cache.put(('fp', i), r))
        n_q = capture(
            model, unit, calls, batches, run,
            lambda i, r: cache.put(('q', i), dict(
                args=(r['args'], r['kwargs']), index=r['index'])))
        if extra is not None and n_q != len(batches):
            raise ValueError(
                f'PD-Quant\'s prediction loss needs units that run once per '
                f'forward; {name} ran {n_q} times on {len(batches)} batches')
        unmatched = corrected = 0
        for i in range(n_q):
            q = cache.get(('q', i))
            fp = cache.get(('fp', i)) if i < n_fp else None
            gap = float('inf') if fp is None else input_gap(
                (fp['args'], fp['kwargs']), q['args'])
            if gap <= c['match_tol']:
                fp_in, target = (fp['args'], fp['kwargs']), fp['output']
            else:  # e.g. features of other RoIs (quantized proposals)
                unmatched += 1
                fp_in = None
                set_call_indices(unit, q['index'])
                with torch.no_grad(), quantization_off(unit):
                    target = unit(*q['args'][0], **q['args'][1])
            if c['dist_correction'] and fp_in is not None:
                fixed = correct_distribution(unit, fp_in, c['dc_iters'],
                                             c['dc_lr'], c['dc_weight'])
                if fixed is not None:
                    fp_in, target = fixed
                    corrected += 1
            sample = dict(args=q['args'], fp=fp_in, target=target,
                          index=q['index'],
                          extra=extra[i] if extra is not None else None)
            cache.pop(('q', i))
            cache.pop(('fp', i))
            cache.put(i, sample)
        for i in range(n_q, n_fp):
            cache.pop(('fp', i))
        if unmatched:
            print_log(f'mmptq: {name}: {unmatched} of {n_q} calls have no '
                      f'FP twin (their input depends on quantized '
                      f'predictions, e.g. RoIs; see match_tol); target = FP '
                      f'{name} on the quantized input', logger='current')
        if corrected:
            print_log(f'mmptq: {name}: distribution correction of '
                      f'{corrected} inputs', logger='current')
        samples = SampleSet(cache, n_q)
        if extra is not None and samples.atomic:
            raise ValueError(f'PD-Quant\'s prediction loss needs one input '
                             f'row per image in {name}')
        return samples

    def _prediction(self, model, batches):
        """(predict, per-batch extras) for PD-Quant: FP logits of every
        calibration batch, and a function running the rest of the network
        in FP from a unit's output."""
        extra = []
        bar = ProgressBar(len(batches))
        with torch.no_grad(), quantization_off(model):
            for batch in batches:
                inputs = model_inputs(model, batch)
                extra.append(dict(inputs=inputs.cpu(), fp_logits=forward_logits(
                    model, inputs).cpu()))
                bar.update()

        def predict(unit, inputs, out):
            handle = unit.register_forward_hook(lambda m, a, o: out)
            try:
                with quantization_off(model):
                    return forward_logits(model, inputs)
            finally:
                handle.remove()

        return predict, extra

    def _fingerprint(self, model: nn.Module, units: List[str],
                     num_batches: int) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(dict(self.cfg, work_dir=None, resume=None),
                            sort_keys=True, default=str).encode())
        h.update(json.dumps([type(self).__name__, units, num_batches]).encode())
        for name, m in model.named_modules():
            if isinstance(m, BaseQuantizer) and m.calibrated:
                h.update(name.encode())
                h.update(m.scale.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


@HOOKS.register_module()
class AdaRoundReconstruction(BlockReconstruction):
    """AdaRound (Nagel et al., ICML 2020): layer-wise learned rounding of
    the weights (quantized inputs, FP targets)."""
    DEFAULTS = dict(layerwise=True, phases=('weights', ))


@HOOKS.register_module()
class BRECQReconstruction(BlockReconstruction):
    """BRECQ (Li et al., ICLR 2021): block-wise AdaRound, then the
    activation steps by LSQ on the same block (MSE loss; the Fisher
    weighting of the paper is not implemented)."""
    DEFAULTS = dict(phases=('weights', 'acts'))


@HOOKS.register_module()
class QDropReconstruction(BlockReconstruction):
    """QDrop (Wei et al., ICLR 2022): rounding and activation steps learned
    jointly, activations randomly kept FP with p = 0.5."""
    DEFAULTS = dict(phases=('joint', ), drop_prob=0.5)


@HOOKS.register_module()
class PDQuantReconstruction(BlockReconstruction):
    """PD-Quant (Liu et al., CVPR 2023): QDrop plus the KL between FP and
    quantized predictions (T = 4, weight 1/λ_r = 10) and distribution
    correction of the inputs of units with BatchNorm."""
    DEFAULTS = dict(phases=('joint', ), drop_prob=0.5, pd_weight=10.0,
                    dist_correction=True)
