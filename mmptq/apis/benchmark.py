"""Benchmark a matrix of models x quantization configs in one process.

Each model's FP checkpoint is evaluated once; then, for every quant config
(a preset name or a file), a fresh copy of the FP model is calibrated by
mmptq's ``CalibrationLoop`` and evaluated with the config's own test
dataloader and evaluator (pycocotools for COCO-style data, mmseg's IoU,
mmpretrain's accuracy). Per cell: the metrics, their delta to FP,
calibration seconds, evaluation seconds as a ratio to the FP evaluation,
and peak memory. :func:`write_report` turns the rows into a markdown
table, a JSON file and one plot per model.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import os.path as osp
import platform
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.utils import ProgressBar
from torch import nn

from mmptq.core import (PACKAGE_DATA, QuantConfig, merge_quant_cfg,
                        model_options, run_batch)
from mmptq.engine import (CalibrationLoop, detached_hooks,
                          install_safe_loader, load_checkpoint_file,
                          load_state_checked, plain_metrics,
                          weight_swapping_hooks)
from mmptq.models.variants import VARIANTS, apply_variant, split_variant
from mmptq.version import __version__
from .runner_setup import build_runner, load_config

#: the demo models of the embedded default: name -> (config, checkpoint),
#: relative to the package data (``mmptq/.mim``: the repository's configs/
#: and checkpoints/ in a source checkout, copies in a wheel)
DEMO_MODELS: Dict[str, tuple] = {
    'mask-rcnn_swin': (
        'configs/demo/mask-rcnn_swin-mini_fpn_mnist-det.py',
        'checkpoints/demo/mask-rcnn_swin-mini_fpn_mnist-det.pth'),
    'retinanet_r18': (
        'configs/demo/retinanet_r18-mini_fpn_mnist-det.py',
        'checkpoints/demo/retinanet_r18-mini_fpn_mnist-det.pth'),
    'deit': ('configs/demo/deit-mini_mnist-cls.py',
             'checkpoints/demo/deit-mini_mnist-cls.pth'),
    'hivit': ('configs/demo/hivit-mini_mnist-cls.py',
              'checkpoints/demo/hivit-mini_mnist-cls.pth'),
    'segformer': ('configs/demo/segformer_mit-mini_mnist-seg.py',
                  'checkpoints/demo/segformer_mit-mini_mnist-seg.pth'),
    'sam': ('configs/demo/sam-mini_mnist-det.py',
            'checkpoints/demo/sam-mini_mnist-det.pth'),
    'lavt': ('configs/demo/lavt_swin-mini_minilm_mnist-ref.py',
             'checkpoints/demo/lavt_swin-mini_minilm_mnist-ref.pth'),
}

#: evaluator key -> (column name, factor to points). COCO APs are reported
#: x100 like the papers' tables; mIoU, top-1 and RefSegMetric's cIoU (the
#: overall IoU of the referring segmentation papers, oIoU) already are
#: percentages.
PRIMARY_METRICS: Dict[str, tuple] = {
    'coco/bbox_mAP': ('APbox', 100.0),
    'coco/segm_mAP': ('APmask', 100.0),
    'cIoU': ('oIoU', 1.0),
    'mIoU': ('mIoU', 1.0),
    'accuracy/top1': ('top-1', 1.0),
}


@dataclass
class ModelSpec:
    """One row group of the matrix: a config and its FP checkpoint."""
    name: str
    config: str
    checkpoint: str
    #: a state-dict variant applied after loading (``mmptq.models.variants``)
    variant: Optional[str] = None


def model_specs(pairs: Sequence[Sequence[str]],
                variant: Optional[str] = None) -> List[ModelSpec]:
    """``ModelSpec`` of each (config, checkpoint) pair, named after the
    config file (``-<variant>`` appended when a variant is applied).

    Args:
        pairs: (config, checkpoint) pairs (``--model``).
        variant: a registered state-dict variant applied to every
            checkpoint after loading (``mmptq.models.variants``).
    """
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f'unknown --variant {variant!r}; the variants '
                         f'are {sorted(VARIANTS)}')
    suffix = f'-{variant}' if variant else ''
    return [ModelSpec(name=config.rsplit('/', 1)[-1].rsplit('.', 1)[0]
                      + suffix, config=config, checkpoint=ckpt,
                      variant=variant) for config, ckpt in pairs]


def demo_models(names: Optional[Sequence[str]] = None) -> List[ModelSpec]:
    """The demo models (all, or those named), with absolute paths;
    ``<demo>-<variant>`` names a demo with a registered variant
    (``sam-signflip``, ``mmptq.models.variants``)."""
    names = list(names or DEMO_MODELS)
    unknown = [n for n in names if split_variant(n)[0] not in DEMO_MODELS]
    if unknown:
        raise ValueError(f'unknown demo model(s) {unknown}; the demo models '
                         f'are {list(DEMO_MODELS)}, their variants '
                         f'<demo>-{{{",".join(VARIANTS)}}}')
    return [ModelSpec(n, str(PACKAGE_DATA / DEMO_MODELS[base][0]),
                      str(PACKAGE_DATA / DEMO_MODELS[base][1]), variant)
            for n in names for base, variant in [split_variant(n)]]


class PeakMemory:
    """Peak memory of a block, in MiB: ``torch.cuda.max_memory_allocated``
    on CUDA; otherwise the process's resident set size, sampled every
    ``interval`` seconds from ``/proc/self/statm`` by a thread (falls back
    to ``ru_maxrss``, the peak of the whole process, where /proc is
    missing)."""

    def __init__(self, cuda: bool = False, interval: float = 0.01) -> None:
        self.cuda = cuda
        self.interval = interval
        self.peak_mib = 0.0

    @staticmethod
    def rss_mib() -> float:
        try:
            with open('/proc/self/statm') as f:
                pages = int(f.read().split()[1])
            return pages * os.sysconf('SC_PAGE_SIZE') / 2**20
        except OSError:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mib = max(self.peak_mib, self.rss_mib())

    def __enter__(self) -> 'PeakMemory':
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_mib = self.rss_mib()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, self.rss_mib())


def primary_metrics(metrics: dict) -> Dict[str, float]:
    """The headline metrics of an evaluator's output, in points."""
    out = {}
    for key, (name, scale) in PRIMARY_METRICS.items():
        if key in metrics:  # rounded: 0.671 x 100 is 67.10000000000001
            out[name] = round(float(metrics[key]) * scale, 6)
    if not out:  # an evaluator mmptq does not know: report everything
        out = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) or getattr(v, 'ndim', 1) == 0}
    return out


def benchmark_config(spec: ModelSpec, work_dir: str,
                     num_images: Optional[int],
                     cfg_options: Optional[dict]) -> Config:
    """``spec``'s config for a benchmark run: ``cfg_options`` applied, logs
    in ``work_dir/<name>``, a plain TestLoop on the first ``num_images``
    test images; its checkpoint and test data checked to exist."""
    if not osp.isfile(spec.checkpoint):
        raise FileNotFoundError(
            f'{spec.name}: checkpoint {spec.checkpoint} not found')
    cfg = load_config(spec.config)
    if model_options(cfg_options):
        cfg.merge_from_dict(model_options(cfg_options))
    cfg.launcher = 'none'
    cfg.work_dir = osp.join(work_dir, spec.name)
    cfg.load_from = None  # loaded (safely) by the benchmark
    # the FP and quantized evaluations are driven from here: plain TestLoop
    fp16 = (cfg.get('test_cfg') or {}).get('fp16', False)
    cfg.test_cfg = dict(type='TestLoop', fp16=fp16)
    dataset = cfg.test_dataloader.dataset
    root = dataset.get('data_root')
    if root and not osp.isdir(root):
        hint = (' (the demo data: run `make data`)'
                if 'mnist' in str(root) else '')
        raise FileNotFoundError(
            f'{spec.name}: the test data of {spec.config} is not at '
            f'{root}{hint}; set its data_root with --cfg-options')
    if num_images is not None:
        if 'pipeline' not in dataset:
            raise ValueError(f'{spec.name}: --num-images needs a plain test '
                             f'dataset, not the wrapper {dataset.type}')
        dataset.indices = num_images
    return cfg


def _restrict_coco_metrics(runner) -> None:
    """With a subset of the images, COCO evaluation must use only their
    ids (mmdet's CocoMetric otherwise scores every image of the ann file,
    counting the unevaluated ones as misses)."""
    dataset = runner.test_loop.dataloader.dataset
    for metric in runner.test_loop.evaluator.metrics:
        if getattr(metric, '_coco_api', None) is not None and \
                hasattr(metric, 'img_ids'):
            metric.img_ids = [dataset.get_data_info(i)['img_id']
                              for i in range(len(dataset))]


def _evaluate(runner) -> tuple:
    cuda = next(runner.model.parameters()).is_cuda
    start = time.perf_counter()
    with PeakMemory(cuda) as mem:
        metrics = runner.test_loop.run()
    return (plain_metrics(metrics), time.perf_counter() - start,
            mem.peak_mib)


def bits_label(quant_cfg: dict) -> str:
    """'W8A8'-style label of a resolved quant_cfg."""
    return f'W{quant_cfg["w_bits"]}A{quant_cfg["a_bits"]}'


def fp_pass_seconds(model: nn.Module, batches: Iterable) -> float:
    """Seconds of one FP forward pass of ``model`` over ``batches`` (data
    loading included, as in calibration): the unit of calibration cost."""
    run = run_batch(model)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            run(batch)
    return time.perf_counter() - start


def _quantized_row(runner, name: str, quant_cfg: QuantConfig,
                   fp_row: dict) -> dict:
    """Calibrate ``runner.model`` (a fresh FP copy) with ``quant_cfg``
    (named ``name``) and evaluate it: one row, with its deltas and costs
    relative to the model's FP row."""
    calib = CalibrationLoop(runner, quant_cfg)
    fp_pass_s = fp_pass_seconds(runner.model, calib.dataloader)
    with PeakMemory(next(runner.model.parameters()).is_cuda) as mem:
        summary = calib.run()
    runner.model.eval()
    metrics, eval_s, eval_peak = _evaluate(runner)
    got = primary_metrics(metrics)
    fp = fp_row['metrics']
    return dict(
        fp_row, quant=name, bits=bits_label(quant_cfg), metrics=got,
        delta={k: round(got[k] - fp[k], 6) for k in got if k in fp},
        all_metrics=metrics, calib_s=calib.seconds, fp_pass_s=fp_pass_s,
        calib_ratio=calib.seconds / fp_pass_s, eval_s=eval_s,
        eval_ratio=eval_s / fp_row['eval_s'],
        peak_mib=max(mem.peak_mib, eval_peak), counts=summary.counts(),
        reconstruction=summary.reconstruction)


def run_benchmark(models: Sequence[ModelSpec],
                  quant_cfgs: Sequence[str],
                  work_dir: str,
                  num_images: Optional[int] = None,
                  calib_samples: Optional[int] = None,
                  cfg_options: Optional[dict] = None,
                  unsafe_load: bool = False) -> List[dict]:
    """Run the matrix and return one row per (model, FP or quant config).

    Args:
        models: configs with their FP checkpoints.
        quant_cfgs: preset names or quant_cfg files, merged over each
            config's own ``quant_cfg`` (as ``tools/test.py --quant-cfg``).
        work_dir: logs go to ``work_dir/<model name>``.
        num_images: evaluate the first N test images only.
        calib_samples: override ``quant_cfg.calib.num_samples``.
        cfg_options: overrides applied to every config.
        unsafe_load: load checkpoints with ``weights_only=False``.
    """
    install_safe_loader(unsafe_load)
    rows: List[dict] = []
    bar = ProgressBar(len(models) * (1 + len(quant_cfgs)))
    for spec in models:
        cfg = benchmark_config(spec, work_dir, num_images, cfg_options)
        runner = build_runner(cfg)
        _restrict_coco_metrics(runner)
        runner.call_hook('before_run')  # as Runner.test(): log files, ...
        ckpt = load_checkpoint_file(spec.checkpoint, unsafe=unsafe_load)
        if spec.variant:
            ckpt = dict(ckpt, state_dict=apply_variant(
                spec.variant, ckpt.get('state_dict', ckpt)))
        # as Runner.load_checkpoint: hooks see the checkpoint (EMAHook
        # copies it into its EMA model), then it loads into the model
        runner.call_hook('after_load_checkpoint', checkpoint=ckpt)
        load_state_checked(runner.model, ckpt.get('state_dict', ckpt),
                           spec.checkpoint)
        common = dict(num_images=len(runner.test_loop.dataloader.dataset),
                      config=spec.config, checkpoint=spec.checkpoint)
        print_log(f'mmptq benchmark: {spec.name} FP', logger='current')
        metrics, fp_eval_s, peak = _evaluate(runner)
        fp = primary_metrics(metrics)
        fp_row = dict(model=spec.name, quant='FP', bits='FP', metrics=fp,
                      delta={k: 0.0 for k in fp}, all_metrics=metrics,
                      calib_s=None, fp_pass_s=None, calib_ratio=None,
                      eval_s=fp_eval_s, eval_ratio=1.0,
                      peak_mib=peak, **common)
        rows.append(fp_row)
        bar.update()
        # quantize the weights the FP test evaluated (an EMAHook's swap);
        # no hook swaps into the quantized copies (as in QuantTestLoop)
        swapping = weight_swapping_hooks(runner)
        for hook in swapping:
            hook.before_test_epoch(runner)
        fp_model = copy.deepcopy(runner.model)
        with detached_hooks(runner, swapping):
            for name in quant_cfgs:
                quant_cfg = merge_quant_cfg(cfg, name,
                                            calib_samples=calib_samples,
                                            cfg_options=cfg_options)
                runner.model = copy.deepcopy(fp_model)
                print_log(f'mmptq benchmark: {spec.name} x {name}',
                          logger='current')
                rows.append(_quantized_row(runner, name, quant_cfg, fp_row))
                bar.update()
        runner.call_hook('after_run')
        del runner, fp_model
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per cell: each headline metric with its delta to FP."""
    names: List[str] = []
    for row in rows:
        names += [k for k in row['metrics'] if k not in names]
    head = ['model', 'quant', 'bits'] + names + [
        'calib s', 'calib / FP pass', 'eval s', 'eval / FP', 'peak MiB']
    lines = ['| ' + ' | '.join(head) + ' |',
             '|' + '---|' * len(head)]
    for row in rows:
        cells = [row['model'], row['quant'], row['bits']]
        for k in names:
            if k not in row['metrics']:
                cells.append('')
            elif row['quant'] == 'FP':
                cells.append(f'{row["metrics"][k]:.2f}')
            else:
                cells.append(f'{row["metrics"][k]:.2f} '
                             f'({row["delta"][k]:+.2f})')
        calib = row['calib_s'] is not None
        cells += [f'{row["calib_s"]:.1f}' if calib else '',
                  f'{row["calib_ratio"]:.1f}' if calib else '',
                  f'{row["eval_s"]:.1f}', f'{row["eval_ratio"]:.2f}',
                  f'{row["peak_mib"]:.0f}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot_rows(rows: Sequence[dict], path: str, model: str) -> None:
    """Headline metrics of one model against its quant configs (in the
    order run), FP as dashed lines."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fp = next(r for r in rows if r['model'] == model and r['quant'] == 'FP')
    quant = [r for r in rows if r['model'] == model and r['quant'] != 'FP']
    fig, ax = plt.subplots(figsize=(1.2 * len(quant) + 3, 3.5))
    labels = [f'{r["quant"]}\n{r["bits"]}' for r in quant]
    for i, (name, value) in enumerate(fp['metrics'].items()):
        color = f'C{i}'
        ax.axhline(value, color=color, ls='--', lw=1,
                   label=f'{name} FP {value:.1f}')
        ax.plot(range(len(quant)), [r['metrics'].get(name) for r in quant],
                'o-', color=color, label=f'{name} quantized')
    ax.set_xticks(range(len(quant)), labels)
    ax.set_ylabel('metric (points)')
    ax.set_title(model)
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: Sequence[dict], work_dir: str) -> Dict[str, str]:
    """``benchmark.md``, ``benchmark.json`` and ``benchmark_<model>.png``
    in ``work_dir``; returns their paths."""
    os.makedirs(work_dir, exist_ok=True)
    paths = dict(markdown=osp.join(work_dir, 'benchmark.md'),
                 json=osp.join(work_dir, 'benchmark.json'))
    with open(paths['markdown'], 'w') as f:
        f.write(markdown_table(rows) + '\n')
    env = dict(mmptq=__version__, torch=torch.__version__,
               python=platform.python_version(), cpus=os.cpu_count(),
               cuda=torch.cuda.is_available(),
               date=datetime.datetime.now().isoformat(timespec='seconds'))
    with open(paths['json'], 'w') as f:
        json.dump(dict(env=env, rows=list(rows)), f, indent=2, default=str)
    for model in dict.fromkeys(r['model'] for r in rows):
        if any(r['model'] == model and r['quant'] != 'FP' for r in rows):
            paths[model] = osp.join(work_dir, f'benchmark_{model}.png')
            plot_rows(rows, paths[model], model)
    return paths
