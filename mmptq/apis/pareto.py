"""``tools/benchmark.py --pareto``: the accuracy–cost front of one model.

Uniform settings (W4A4, W6A6, W8A8 of one recipe) and mixed allocations
at several budgets (``mmptq.apis.sensitivity.allocate_bits``, one
sensitivity measurement shared by all budgets) are written as quant_cfg
files, evaluated by :func:`mmptq.apis.benchmark.run_benchmark`, and placed
by their BOPs (GBOPs per image, Σ MACs · b_w · b_a) and model size (MiB of
quantized weights)."""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

from mmptq.core import build_units, extrapolate, load_quant_cfg
from .benchmark import ModelSpec, markdown_table, run_benchmark
from .sensitivity import (allocate_bits, config_cost, load_model,
                          measure_sensitivity, openmmlab_loss,
                          sensitivity_table, write_quant_cfg,
                          write_sensitivity)


def run_pareto(spec: ModelSpec,
               work_dir: str,
               quant_cfg: str = 'w4a4',
               uniform: Sequence[int] = (4, 5, 6, 8),
               budgets: Sequence = ('W4A4', 'W5A5', 'W6A6'),
               candidates: Sequence[int] = (3, 4, 5, 6, 8),
               a_candidates: Optional[Sequence[int]] = (4, 5, 6, 8),
               metric: str = 'bops',
               eval_batches: int = 2,
               measure: str = 'lowest',
               num_images: Optional[int] = None,
               calib_samples: Optional[int] = None,
               cfg_options: Optional[dict] = None) -> List[dict]:
    """Benchmark rows of ``spec``: FP, uniform W{b}A{b} for ``uniform``
    and mixed allocations at ``budgets``, each with ``gbops`` and
    ``size_mib``; the quant_cfg files and sensitivity reports go to
    ``work_dir``.

    Args:
        spec: the model and its FP checkpoint.
        work_dir: reports, quant_cfg files, logs.
        quant_cfg: the recipe (preset or file) every setting derives from.
        uniform: bit widths of the uniform settings.
        budgets: mixed-precision budgets ('W5A5' or numbers).
        candidates: bit widths the allocation chooses from (the weights'
            where ``a_candidates`` is given).
        a_candidates: bit widths of the activations (None:
            ``candidates``); the default floor of 4 bits: see
            docs/methods/mixed-precision.md.
        metric: the budget's metric ('bops', 'size', 'avg_bits').
        eval_batches: batches each op's sensitivity is measured on.
        measure: 'lowest' (measure at the lowest candidate, extrapolate
            the others) or 'each'.
        num_images: evaluate the first N test images only.
        calib_samples: calibration images.
        cfg_options: overrides of the config.
    """
    model, batches, base = load_model(spec, quant_cfg, work_dir,
                                      calib_samples, cfg_options)
    base = dict(base)
    every = sorted({*candidates, *(a_candidates or ())})
    measured = every if measure == 'each' else every[:1]
    results = [measure_sensitivity(model, batches, base, b, eval_batches,
                                   openmmlab_loss) for b in measured]
    for res in results:
        write_sensitivity(res, work_dir, f'sensitivity_{res.bits}bit')
    files: Dict[str, str] = {}
    for b in uniform:
        files[f'W{b}A{b}'] = osp.join(work_dir, f'uniform_w{b}a{b}.py')
        write_quant_cfg(dict(base, w_bits=b, a_bits=b), files[f'W{b}A{b}'],
                        f'uniform W{b}A{b} of {quant_cfg}')
    for budget in budgets:
        name = f'mixed@{budget}'
        files[name] = osp.join(work_dir, f'mixed_{metric}_{budget}.py')
        allocate_bits(model, batches, dict(base, mixed_precision=dict(
            budget=budget, w_candidates=tuple(candidates),
            a_candidates=tuple(a_candidates or candidates), metric=metric,
            eval_batches=eval_batches, measure=measure)), files[name],
            openmmlab_loss,
            results)
    del model
    rows = run_benchmark([spec], list(files.values()), work_dir,
                         num_images=num_images, calib_samples=calib_samples,
                         cfg_options=cfg_options)
    table = sensitivity_table(results)
    extrapolate(table, tuple(every))
    units = build_units(table, tuple(every), 'bops', 'noise')
    first_op = results[0].summary.first_op
    names = {path: name for name, path in files.items()}
    for row in rows:
        if row['quant'] == 'FP':
            continue
        cfg = load_quant_cfg(row['quant'])
        row['quant'] = names[row['quant']]
        if row['quant'].startswith('mixed'):
            row['bits'] = 'mixed'
        row['gbops'] = config_cost(units, cfg, first_op, 'bops')
        row['size_mib'] = config_cost(units, cfg, first_op, 'size')
    write_pareto(rows, work_dir, spec.name)
    return rows


def write_pareto(rows: Sequence[dict], work_dir: str,
                 model: str) -> Dict[str, str]:
    """``pareto.md`` (the benchmark table with GBOPs and MiB),
    ``pareto.json`` and ``pareto_<model>.png`` (each headline metric
    against GBOPs and against MiB; uniform and mixed as two series, FP
    dashed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    os.makedirs(work_dir, exist_ok=True)
    paths = dict(markdown=osp.join(work_dir, 'pareto.md'),
                 json=osp.join(work_dir, 'pareto.json'),
                 plot=osp.join(work_dir, f'pareto_{model}.png'))
    quant = [r for r in rows if r['quant'] != 'FP']
    lines = [markdown_table(rows), '', '| setting | GBOPs / image | MiB |',
             '|---|---|---|']
    lines += [f"| {r['quant']} | {r['gbops']:.4g} | {r['size_mib']:.4g} |"
              for r in quant]
    with open(paths['markdown'], 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(paths['json'], 'w') as f:
        json.dump(list(rows), f, indent=2, default=str)
    fp = next(r for r in rows if r['quant'] == 'FP')
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], 'gbops', 'GBOPs per image'),
                           (axes[1], 'size_mib', 'quantized weights (MiB)')):
        for i, name in enumerate(fp['metrics']):
            ax.axhline(fp['metrics'][name], color=f'C{i}', ls='--', lw=1)
            for mixed, marker in ((False, 'o-'), (True, 's--')):
                pts = sorted((r[key], r['metrics'][name], r['quant'])
                             for r in quant
                             if r['quant'].startswith('mixed') == mixed)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker,
                        color=f'C{i}', label=f"{name} "
                        f"{'mixed' if mixed else 'uniform'}")
                for x, y, text in pts:
                    ax.annotate(text, (x, y), fontsize=6)
        ax.set_xlabel(label)
        ax.set_ylabel('metric (points)')
        ax.grid(alpha=.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f'{model}: accuracy against cost (FP dashed)')
    fig.tight_layout()
    fig.savefig(paths['plot'], dpi=120)
    plt.close(fig)
    return paths
