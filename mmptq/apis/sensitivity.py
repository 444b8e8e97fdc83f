"""Per-op sensitivity and mixed-precision allocation (issue #18).

:func:`measure_sensitivity` quantizes a copy of the model ONCE at a low
setting (every op at ``bits``, calibration in parallel mode so that each
quantizer sees the FP signal, as it does when its op is quantized alone),
then switches on one op at a time (``mmptq.core.sensitivity``): the output
SQNR and the task-loss increase of every op alone, weights and input
activations separately, attention matmuls and softmax included.

:func:`allocate_bits` resolves ``quant_cfg.mixed_precision``: sensitivity
at each candidate bit width, then the HAWQ-V3 integer program
(``mmptq.core.mixed_precision``), written as a plain quant_cfg file whose
``overrides`` carry the chosen bits: ``--quant-cfg`` takes it as it is.
"""
import copy
import json
import os
import os.path as osp
import pprint
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mmengine.logging import print_log
from torch import Tensor, nn

from mmptq.core import (LayerRules, QuantSummary, Unit, allocate,
                        budget_cost, build_units, extrapolate, load_quant_cfg,
                        merge_quant_cfg, op_sensitivity, parse_uniform,
                        quant_ops, quantize_model, resolve_quant_cfg,
                        rule_bits, rules_cost, run_batch, to_overrides,
                        total_params)
from mmptq.core.sensitivity import hessian_sensitivity
from mmptq.engine import (build_calib_dataloader, install_safe_loader,
                          load_checkpoint_file, load_state_checked)
from .analyze import build_random_model, sqnr_db, synthetic_batch
from .benchmark import ModelSpec, benchmark_config
from .runner_setup import build_runner


def output_probes(model: nn.Module) -> List[nn.Module]:
    """The modules whose outputs are compared with FP: the neck (else the
    backbone) and the dense head of a detector (``bbox_head``, or
    ``rpn_head`` of a two-stage one: the RoI head's damage shows in the
    loss only), the classifier conv of a segmentor's decode head, the head
    of a classifier; a plain module: itself.

    The neck stays compared for a one-stage detector as well: on the demo
    RetinaNet its noise ratio dominates the mean (0.034 per tensor against
    the head outputs' 0.009 at W4A4), but comparing the head alone gave a
    worse allocation at the BOPs of W4A4 (APbox 70.5 against 71.3; better
    at W5A5: 75.2 against 74.6; docs/methods/mixed-precision.md)."""
    if not hasattr(model, 'data_preprocessor'):
        return [model]
    probes = []
    for path in ('neck', 'backbone'):
        if getattr(model, path, None) is not None:
            probes.append(getattr(model, path))
            break
    for path in ('bbox_head', 'rpn_head', 'decode_head.conv_seg', 'head'):
        try:
            probes.append(model.get_submodule(path))
            break
        except AttributeError:
            continue
    return probes


def openmmlab_loss(model: nn.Module) -> Callable[[dict], Tensor]:
    """One batch → the task loss Σ of an OpenMMLab model's ``loss`` terms
    (train-mode preprocessing, ``mode='loss'``, ``parse_losses``); the
    model stays in eval mode (BN statistics, no dropout)."""

    def loss(batch: dict) -> Tensor:
        data = model.data_preprocessor(copy.copy(batch), True)
        total, _ = model.parse_losses(model(**data, mode='loss'))
        return total

    return loss


def sensitivity_cfg(quant_cfg: dict, bits: int) -> dict:
    """The low setting of a quant_cfg: every op at ``bits`` (w_bits, a_bits,
    attention operands; bit overrides dropped, others kept), calibration in
    parallel mode, no reconstruction, no mixed precision."""
    cfg = copy.deepcopy(dict(resolve_quant_cfg(quant_cfg)))
    cfg.update(w_bits=bits, a_bits=bits, reconstruction=None,
               mixed_precision=None)
    cfg['attn']['bits'] = None
    cfg['calib']['mode'] = 'parallel'
    cfg['overrides'] = [
        {k: v for k, v in ov.items() if k not in ('w_bits', 'a_bits')}
        for ov in cfg['overrides']]
    cfg['overrides'] = [ov for ov in cfg['overrides']
                        if set(ov) - {'name', 'first_op'}]
    return cfg


def _batch_size(batch) -> int:
    if isinstance(batch, dict) and 'inputs' in batch:
        return len(batch['inputs'])
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return first.shape[0] if isinstance(first, Tensor) else 1


@dataclass
class SensitivityResult:
    """Rows (one per op, forward order): key, name, kind ('weight' /
    'act'), layer_kind, unit, bits, macs (per image), params, sqnr (dB),
    noise (10^(−SQNR/10)), loss_increase (None without a loss), hessian
    (HAWQ-V2's Ω of a weight op with ``hutchinson``, else None; with
    trace, trace_err); the seconds of the one calibration, of the per-op
    evaluation and of the Hutchinson estimate."""
    bits: int
    rows: List[dict]
    calib_s: float
    eval_s: float
    summary: QuantSummary = field(repr=False)
    hessian_s: float = 0.0

    @property
    def cost_ratio(self) -> float:
        """(calibration + evaluation + Hutchinson) / calibration."""
        return (self.calib_s + self.eval_s + self.hessian_s) / self.calib_s


def measure_sensitivity(model: nn.Module,
                        batches: Sequence,
                        quant_cfg: dict,
                        bits: int = 4,
                        eval_batches: int = 2,
                        loss: Optional[Callable] = None,
                        hutchinson: int = 0) -> SensitivityResult:
    """Sensitivity of every quantized op of ``model`` alone at ``bits``.

    Args:
        model: the FP model (not changed: a copy is quantized).
        batches: calibration batches; the first ``eval_batches`` of them
            are the evaluation batches.
        quant_cfg: the recipe (quantizers, observers, overrides);
            :func:`sensitivity_cfg` sets the bits.
        bits: the low setting.
        eval_batches: batches each op is evaluated on.
        loss: batch → task loss of the quantized copy's forward, built from
            it by ``loss(qmodel)`` (e.g. :func:`openmmlab_loss`); None: SQNR
            only.
        hutchinson: Rademacher vectors per evaluation batch of the
            Hessian-trace estimate of the weights (HAWQ-V2's Ω,
            :func:`mmptq.core.sensitivity.hessian_sensitivity`; needs
            ``loss``); 0: not estimated.
    """
    if hutchinson and loss is None:
        raise ValueError('the Hutchinson Hessian trace needs a task loss '
                         '(a checkpoint and labelled calibration data)')
    batches = list(batches)
    qmodel = copy.deepcopy(model)
    start = time.perf_counter()
    _, summary = quantize_model(qmodel, sensitivity_cfg(quant_cfg, bits),
                                batches)
    calib_s = time.perf_counter() - start
    run = run_batch(qmodel)
    ops = quant_ops(qmodel, summary, lambda: run(batches[0]))
    if loss is not None:
        forward = loss(qmodel)
    else:
        def forward(batch) -> None:
            run(batch)

    print_log(f'mmptq sensitivity: {len(ops)} ops at {bits} bits on '
              f'{min(eval_batches, len(batches))} batches', logger='current')
    start = time.perf_counter()
    rows = op_sensitivity(ops, batches[:eval_batches],
                          forward, output_probes(qmodel), sqnr_db)
    eval_s = time.perf_counter() - start
    start = time.perf_counter()
    hessian = hessian_sensitivity(ops, batches[:eval_batches], forward,
                                  hutchinson) if hutchinson else {}
    hessian_s = time.perf_counter() - start
    per_image = _batch_size(batches[0])
    for op, row in zip(ops, rows):
        h = hessian.get(op.key, {})
        row.update(layer_kind=op.layer_kind, unit=op.unit,
                   macs=op.macs / per_image, params=op.params,
                   hessian=h.get('hessian'), trace=h.get('trace'),
                   trace_err=h.get('trace_err'))
    return SensitivityResult(bits, rows, calib_s, eval_s, summary,
                             hessian_s)


def sensitivity_table(results: Sequence[SensitivityResult]) -> List[dict]:
    """The op rows of one or more bit widths merged: each row with
    ``sensitivity={bits: dict(sqnr, noise, loss_increase)}`` (ops present
    at every bit width, in forward order)."""
    merged: Dict[str, dict] = {}
    for res in results:
        for row in res.rows:
            out = merged.setdefault(row['key'], dict(
                {k: row[k] for k in ('key', 'name', 'kind', 'layer_kind',
                                     'unit', 'macs', 'params')},
                sensitivity={}))
            out['sensitivity'][res.bits] = {
                k: row.get(k) for k in ('sqnr', 'noise', 'loss_increase',
                                        'hessian')}
    return [r for r in merged.values()
            if len(r['sensitivity']) == len(results)]


@dataclass
class Allocation:
    """:func:`allocate_bits`' answer: the quant_cfg written (plain dict),
    the units and the chosen option of each, the cost and the budget (in
    the metric's unit), the solver used, the sensitivity measurements."""
    quant_cfg: dict
    units: List[Unit]
    choice: List[int]
    cost: float
    budget: float
    metric: str
    solver: str
    results: List[SensitivityResult]


def _metric_unit(value: float, units: Sequence[Unit], metric: str) -> float:
    return value / total_params(units) if metric == 'avg_bits' else value


def allocate_bits(model: nn.Module,
                  batches: Sequence,
                  quant_cfg: dict,
                  out_file: Optional[str] = None,
                  loss: Optional[Callable] = None,
                  results: Optional[Sequence[SensitivityResult]] = None
                  ) -> Allocation:
    """Resolve ``quant_cfg.mixed_precision`` on ``model``: per-op
    sensitivity at the candidate bit widths (``measure``), the integer
    program under the
    budget, and the quant_cfg with one override per layer / attention host
    (its ``mixed_precision`` cleared, ``attn.bits`` cleared so that the
    overrides set the attention bits).

    Args:
        model: the FP model (not changed).
        batches: calibration batches.
        quant_cfg: a quant_cfg with ``mixed_precision``.
        out_file: write the quant_cfg there (a config file).
        loss: see :func:`measure_sensitivity`.
        results: sensitivity already measured (reused; the candidates
            not measured are extrapolated).
    """
    cfg = resolve_quant_cfg(quant_cfg)
    mp = cfg['mixed_precision']
    if mp is None:
        raise ValueError('quant_cfg.mixed_precision is not set: give '
                         "dict(budget='W5A5', candidates=(4, 6, 8))")
    objective = mp['objective']
    if objective in ('loss', 'hessian') and loss is None:
        raise ValueError(f'mixed_precision.objective={objective!r} needs a '
                         'model with a task loss and labelled calibration '
                         'data')
    measured = mp['candidates'] if mp['measure'] == 'each' else \
        mp['candidates'][:1]
    results = list(results or [
        measure_sensitivity(model, batches, cfg, b, mp['eval_batches'], loss,
                            mp['hutchinson'] if objective == 'hessian'
                            else 0)
        for b in measured])
    table = sensitivity_table(results)
    extrapolate(table, mp['candidates'])
    units = build_units(table, mp['w_candidates'], mp['metric'], objective,
                        mp['a_candidates'])
    uniform = parse_uniform(mp['budget'])
    first_op = results[0].summary.first_op
    rules = None
    if uniform is not None:
        at = dict(copy.deepcopy(dict(cfg)), w_bits=uniform[0],
                  a_bits=uniform[1])
        rules = LayerRules(at, first_op).for_layer
    budget = budget_cost(units, mp['budget'], mp['metric'], rules,
                         cfg['attn']['bits'])
    # units whose damage the compared outputs do not see (e.g. a RoI head
    # behind the RPN: zero value at every bit width) are not free: they
    # take the bits of the budget's uniform setting (of the quant_cfg for
    # a numeric budget), and their cost leaves the budget
    every = units
    unseen = [u for u in every if not any(u.values)]
    units = [u for u in every if any(u.values)]
    keep = rules or LayerRules(cfg, first_op).for_layer
    fixed = rules_cost(unseen, keep, cfg['attn']['bits'], mp['metric'])
    if unseen:
        print_log(f'mmptq: {len(unseen)} units unseen by the compared '
                  f'outputs keep the bits of {mp["budget"]}: '
                  f'{[u.name for u in unseen]}', logger='current', level=30)
    choice, solver = allocate(units, budget - fixed, mp['solver'])
    cost = fixed + sum(u.costs[j] for u, j in zip(units, choice))
    out = copy.deepcopy(dict(cfg))
    out['mixed_precision'] = None
    out['attn']['bits'] = None
    kept = []  # the unseen units at the bits they keep
    for u in unseen:
        w, a = rule_bits(u, keep, cfg['attn']['bits'])
        w0, a0 = u.options[0]  # None: the metric does not allocate it
        kept.append(Unit(u.name, [(None if w0 is None else w,
                                   None if a0 is None else a)], [0.0],
                         [0.0], u.ops))
    out['overrides'] = list(out['overrides']) + to_overrides(
        units, choice) + to_overrides(kept, [0] * len(kept))
    result = Allocation(out, units, choice,
                        _metric_unit(cost, every, mp['metric']),
                        _metric_unit(budget, every, mp['metric']),
                        mp['metric'], solver, results)
    if out_file:
        write_quant_cfg(out, out_file, (
            f"mixed precision (mmptq.apis.sensitivity.allocate_bits): "
            f"{result.metric} {result.cost:.6g} <= budget "
            f"{result.budget:.6g} ({mp['budget']}), objective {objective}, "
            f"solver {solver}; edit the overrides at will"))
    return result


def write_quant_cfg(quant_cfg: dict, path: str, comment: str = '') -> None:
    """A config file ``quant_cfg = {...}`` (every key explicit), headed by
    ``comment`` (a line)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(f'# {comment}\n' if comment else '')
        f.write('quant_cfg = ' + pprint.pformat(
            dict(quant_cfg), sort_dicts=False, width=79) + '\n')


def config_cost(units: Sequence[Unit], quant_cfg: dict,
                first_op: Optional[str], metric: str) -> float:
    """Cost of ``units`` (from :func:`allocate_bits`) under a quant_cfg's
    per-layer bits, in the metric's unit (GBOPs per image, MiB, bits)."""
    cfg = resolve_quant_cfg(quant_cfg)
    return _metric_unit(
        budget_cost(units, 'W{}A{}'.format(cfg['w_bits'], cfg['a_bits']),
                    metric, LayerRules(cfg, first_op).for_layer,
                    cfg['attn']['bits']), units, metric)


def load_model(spec: ModelSpec, quant_cfg: str, work_dir: str,
               calib_samples: Optional[int] = None,
               cfg_options: Optional[dict] = None,
               unsafe_load: bool = False) -> Tuple[nn.Module, list, dict]:
    """(FP model with its checkpoint, calibration batches, resolved
    quant_cfg) of a config, as ``tools/test.py`` would calibrate it."""
    install_safe_loader(unsafe_load)
    cfg = benchmark_config(spec, work_dir, None, cfg_options)
    runner = build_runner(cfg)
    ckpt = load_checkpoint_file(spec.checkpoint, unsafe=unsafe_load)
    load_state_checked(runner.model, ckpt.get('state_dict', ckpt),
                       spec.checkpoint)
    qcfg = merge_quant_cfg(cfg, quant_cfg, calib_samples=calib_samples,
                           cfg_options=cfg_options)
    batches = list(build_calib_dataloader(runner, qcfg['calib']))
    return runner.model.eval(), batches, qcfg


def write_sensitivity(result: SensitivityResult, out_dir: str,
                      name: str = 'sensitivity') -> Dict[str, str]:
    """``<name>.md`` (table), ``<name>.json`` and ``<name>.png`` (per-op
    bars in forward order: SQNR drop, loss increase) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: osp.join(out_dir, f'{name}.{ext}')
             for ext in ('md', 'json', 'png')}
    rows = result.rows
    lines = [f'sensitivity at {result.bits} bits (op alone, rest FP); '
             f'calibration {result.calib_s:.1f} s, per-op evaluation '
             f'{result.eval_s:.1f} s, Hutchinson {result.hessian_s:.1f} s '
             f'(cost ratio {result.cost_ratio:.2f})',
             '', '| # | op | kind | layer | GMACs | SQNR dB | loss + | '
             'Tr(H)/n | Ω (HAWQ-V2) |', '|---|---|---|---|---|---|---|---|---|']

    def fmt(value, spec):
        return '' if value is None else format(value, spec)

    for i, r in enumerate(rows):
        trace = None if r.get('trace') is None else \
            r['trace'] / max(r['params'], 1)
        lines.append(f"| {i} | {r['name']} | {r['kind']} | "
                     f"{r['layer_kind']} | {r['macs'] / 1e9:.4f} | "
                     f"{r['sqnr']:.1f} | {fmt(r['loss_increase'], '+.4g')} | "
                     f"{fmt(trace, '.4g')} | {fmt(r.get('hessian'), '.4g')} |")
    with open(paths['md'], 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(paths['json'], 'w') as f:
        json.dump(dict(bits=result.bits, calib_s=result.calib_s,
                       eval_s=result.eval_s, hessian_s=result.hessian_s,
                       cost_ratio=result.cost_ratio,
                       rows=rows), f, indent=2, default=str)
    plot_sensitivity(rows, paths['png'], f'{result.bits}-bit ops alone')
    return paths


def plot_sensitivity(rows: Sequence[dict], path: str, title: str) -> None:
    """Bars per op in forward order: the output SQNR (dB, capped at 100;
    lower: more sensitive) and, where measured, the loss increase."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    has_loss = any(r['loss_increase'] is not None for r in rows)
    fig, axes = plt.subplots(1 + has_loss, 1, sharex=True,
                             figsize=(max(6, 0.12 * len(rows) + 2),
                                      3 + 2.5 * has_loss), squeeze=False)
    x = range(len(rows))
    colors = ['C0' if r['kind'] == 'weight' else 'C1' for r in rows]
    axes[0, 0].bar(x, [min(r['sqnr'], 100.0) for r in rows], color=colors)
    axes[0, 0].set_ylabel('SQNR (dB)')
    axes[0, 0].set_title(f'{title} (blue: weights, orange: activations)')
    if has_loss:
        axes[1, 0].bar(x, [r['loss_increase'] or 0.0 for r in rows],
                       color=colors)
        axes[1, 0].set_ylabel('loss increase')
    axes[-1, 0].set_xticks(list(x), [f"{r['name']}:{r['kind'][0]}"
                                     for r in rows], rotation=90, fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_sensitivity(config: str,
                    quant_cfg: str,
                    work_dir: str,
                    checkpoint: Optional[str] = None,
                    bits: Optional[int] = None,
                    mixed_precision: Optional[dict] = None,
                    calib_samples: Optional[int] = None,
                    cfg_options: Optional[dict] = None,
                    size: Tuple[int, int] = (224, 224),
                    calib_batches: int = 4,
                    hutchinson: int = 0) -> Dict[str, str]:
    """``tools/analyze.py --sensitivity``: the per-op table and plot of one
    config, and with ``mixed_precision`` (or ``quant_cfg.mixed_precision``)
    the allocation, written as ``<work_dir>/mixed_precision.py``.

    Args:
        config: a config file.
        quant_cfg: preset name or quant_cfg file (the recipe).
        work_dir: where the reports and the quant_cfg go.
        checkpoint: the FP weights; calibration batches come from the
            config's data (``quant_cfg.calib``) and the task loss is
            measured. None: random weights, synthetic images, SQNR only.
        bits: the low setting (default: the quant_cfg's min(w_bits,
            a_bits)).
        mixed_precision: merged over ``quant_cfg.mixed_precision``.
        calib_samples: override ``quant_cfg.calib.num_samples``.
        cfg_options: overrides of the config.
        size: input size of the synthetic images (random weights).
        calib_batches: synthetic batches (random weights).
        hutchinson: Rademacher vectors per batch of the weights'
            Hessian-trace estimate in the table (HAWQ-V2's Ω; needs
            ``checkpoint``); 0: none. An allocation with
            ``objective='hessian'`` takes ``mixed_precision.hutchinson``.

    Returns:
        The paths written.
    """
    if checkpoint is not None:
        name = osp.splitext(osp.basename(config))[0]
        model, batches, qcfg = load_model(
            ModelSpec(name, config, checkpoint), quant_cfg, work_dir,
            calib_samples, cfg_options)
        loss = openmmlab_loss
    else:
        model, scope = build_random_model(config, cfg_options)
        batches = [synthetic_batch(scope, 1, size, seed=i)
                   for i in range(calib_batches)]
        qcfg = resolve_quant_cfg(load_quant_cfg(quant_cfg))
        loss = None
    if mixed_precision:
        qcfg = dict(qcfg, mixed_precision={
            **(qcfg['mixed_precision'] or {}), **mixed_precision})
    paths: Dict[str, str] = {}
    if qcfg['mixed_precision'] is None:
        bits = bits or min(qcfg['w_bits'], qcfg['a_bits'])
        result = measure_sensitivity(model, batches, qcfg, bits, loss=loss,
                                     hutchinson=hutchinson)
        return write_sensitivity(result, work_dir, f'sensitivity_{bits}bit')
    out = osp.join(work_dir, 'mixed_precision.py')
    alloc = allocate_bits(model, batches, qcfg, out, loss)
    for result in alloc.results:
        for key, path in write_sensitivity(
                result, work_dir, f'sensitivity_{result.bits}bit').items():
            paths[f'{result.bits}bit {key}'] = path
    paths['quant_cfg'] = out
    print_log(f'mmptq: mixed precision {alloc.metric} {alloc.cost:.4g} '
              f'(budget {alloc.budget:.4g}, {alloc.solver}) → {out}',
              logger='current')
    return paths
