"""The export workflow of ``tools/export.py``: a quantized OpenMMLab model
(restored from a quantized checkpoint, or calibrated from an FP one) to an
ONNX graph with QDQ nodes (``mmptq.export``); and the benchmark matrix
through ONNX Runtime (``tools/benchmark.py --runtime onnxruntime``):
metric and latency of torch FP32, ORT FP32 and ORT QDQ int8."""
import copy
import json
import os
import os.path as osp
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence

import onnx
import torch
from onnxruntime import __version__ as ort_version
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import TestLoop

from mmptq.core import (QuantConfig, merge_quant_cfg, quantize_model)
from mmptq.engine import (detached_hooks, install_safe_loader,
                          is_quantized_checkpoint, load_checkpoint_file,
                          plain_metrics, unwrap, weight_swapping_hooks)
from mmptq.export import ExportGraph, ExportSummary, export_qdq
from mmptq.export.runtime import (latency_per_image, ort_ready,
                                  ort_session, runtime_forward, session_call)
from mmptq.utils.files import prepare_out_path
from .benchmark import benchmark_config, bits_label, primary_metrics
from .runner_setup import build_runner, configure_quant_test, load_config


def example_input(runner, batch_size: int = 1) -> torch.Tensor:
    """The preprocessed image tensor of the first ``batch_size`` test
    samples (the graph's input: the data preprocessor stays in Python)."""
    model = unwrap(runner.model)
    loader = runner.test_dataloader
    samples = [loader.dataset[i] for i in range(batch_size)]
    data = model.data_preprocessor(loader.collate_fn(samples), False)
    return data['inputs']


def export_model(model: torch.nn.Module, x: torch.Tensor, out: str,
                 dynamic_batch: bool = True) -> ExportSummary:
    """Export the runnable graph of a quantized ``model`` (``ExportGraph``)
    for the input ``x`` to the ONNX file ``out``."""
    graph = ExportGraph(model).eval()
    with torch.no_grad():
        outputs = graph(x)
    summary = export_qdq(graph, (x, ), out, input_names=('input', ),
                         output_names=graph.output_names(outputs),
                         dynamic_batch=dynamic_batch, quantized=model)
    summary.in_python = graph.in_python
    return summary


def quantized_runner(cfg: Config,
                     checkpoint: str,
                     quant_cfg: Optional[QuantConfig] = None,
                     unsafe_load: bool = False):
    """The Runner of ``cfg`` whose model holds ``checkpoint`` quantized:
    restored when it comes from ``tools/quantize.py``, else calibrated
    with ``quant_cfg`` (an FP checkpoint without one is an error). The
    config's test loop does it (``QuantTestLoop``), without evaluating."""
    install_safe_loader(unsafe_load)
    if quant_cfg is None and not is_quantized_checkpoint(
            load_checkpoint_file(checkpoint, unsafe=unsafe_load)):
        raise ValueError(f'{checkpoint} is an FP checkpoint: pass --quant-cfg '
                         '(a preset or a file) to calibrate it, or export a '
                         'checkpoint from tools/quantize.py')
    configure_quant_test(cfg, checkpoint, quant_cfg, evaluate=False,
                         unsafe_load=unsafe_load)
    runner = build_runner(cfg)
    runner.test()
    unwrap(runner.model).eval()
    return runner


def export_checkpoint(cfg: Config,
                      checkpoint: str,
                      out: str,
                      quant_cfg: Optional[QuantConfig] = None,
                      unsafe_load: bool = False,
                      ort: bool = False) -> ExportSummary:
    """Export ``checkpoint`` (quantized by ``tools/quantize.py``, or FP and
    calibrated here with ``quant_cfg``) to the ONNX file ``out``, for the
    first test image's shape (the batch dim is dynamic). The output path
    is checked before any work and is never the checkpoint.

    Args:
        cfg: the model's config (its test dataloader gives the example
            input; its calibration set the batches of an FP checkpoint).
        checkpoint: a quantized or FP checkpoint.
        out: the .onnx file to write.
        quant_cfg: how to quantize an FP checkpoint (for a quantized one,
            if given, the setting it was made with).
        unsafe_load: load checkpoints with ``weights_only=False``.
        ort: also write ``<out>.ort.onnx``, the graph rewritten for ONNX
            Runtime's CPU kernels (``mmptq.export.runtime.ort_ready``).
    """
    prepare_out_path(out, checkpoint, '--out')
    if not out.endswith('.onnx'):
        raise ValueError(f'--out {out}: give an .onnx file')
    runner = quantized_runner(cfg, checkpoint, quant_cfg, unsafe_load)
    summary = export_model(unwrap(runner.model), example_input(runner), out)
    print_log(summary.table(), logger='current')
    if ort:
        ready = ort_ready(out)
        print_log(f'for ONNX Runtime: {ready}' + (
            ' (no rewrite applies: the same file)' if ready == out else ''),
                  logger='current')
    return summary


def _graph_ops(path: str) -> Dict[str, int]:
    """Op types of an ONNX file and their counts."""
    return dict(Counter(n.op_type for n in onnx.load(path).graph.node))


def _runtime_cell(runner, graph: ExportGraph, path: str,
                  threads: int = 0) -> tuple:
    """Metrics of the config's evaluator on ``graph``'s ONNX file ``path``
    run by ONNX Runtime, with the optimized graph's op counts (what fused:
    QLinearConv, QLinearMatMul, MatMulIntegerToFloat...); and the
    session."""
    optimized = path.replace('.onnx', '.ort-optimized.onnx')
    session = ort_session(ort_ready(path), optimized_path=optimized,
                          threads=threads)
    swapping = weight_swapping_hooks(runner)
    with runtime_forward(graph, session), detached_hooks(runner, swapping):
        metrics = plain_metrics(TestLoop.run(runner.test_loop))
    return dict(ort_metrics=metrics, ort_ops=_graph_ops(optimized),
                ort_ms={}, torch_ms={}), session


def _time_rows(rows: List[dict], sessions: list, fp: torch.nn.Module,
               x: torch.Tensor, repeats: int, threads: int = 0) -> None:
    """Fill each row's ``ort_ms`` (its session) and the first (FP) row's
    ``torch_ms`` (the module ``fp``): ms per image at batch 1 and 8, the
    sessions and torch timed in interleaved rounds. ``threads`` (> 0):
    torch's threads while timing (the sessions were made with as many
    intra-op threads); with 1, CPU time of this thread
    (``time.thread_time``) instead of wall time."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    torch_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for batch in (1, 8):
            xb = x.repeat(batch, *([1] * (x.dim() - 1)))
            calls = {i: session_call(s, xb) for i, s in enumerate(sessions)}
            calls['torch'] = lambda xb=xb: fp(xb)
            with torch.no_grad():
                ms = latency_per_image(calls, batch, repeats, clock=clock)
            for i, row in enumerate(rows):
                row['ort_ms'][batch] = ms[i]
            rows[0]['torch_ms'][batch] = ms['torch']
    finally:
        torch.set_num_threads(torch_threads)
    for row in rows:
        row['timing'] = dict(threads=threads, clock=clock.__name__)


def _runtime_runner(spec, quant_cfg: Optional[QuantConfig], work_dir: str,
                    num_images: Optional[int], cfg_options: Optional[dict],
                    unsafe_load: bool):
    cfg = benchmark_config(spec, work_dir, num_images, cfg_options)
    configure_quant_test(cfg, spec.checkpoint, quant_cfg,
                         unsafe_load=unsafe_load)
    runner = build_runner(cfg)
    metrics = plain_metrics(runner.test())
    return runner, metrics


def runtime_benchmark(models: Sequence,
                      quant_cfgs: Sequence[str],
                      work_dir: str,
                      num_images: Optional[int] = None,
                      calib_samples: Optional[int] = None,
                      cfg_options: Optional[dict] = None,
                      repeats: int = 10,
                      unsafe_load: bool = False,
                      threads: int = 0) -> List[dict]:
    """The benchmark matrix through ONNX Runtime: per model the FP row
    (torch FP32 and ORT FP32), per quant config the fake-quant row and
    its QDQ graph in ORT (int8 kernels where ORT fuses the QDQ groups).
    Each row: the evaluator's metrics in torch and in ORT, latency per
    image in ms (median of ``repeats`` calls after 2 warm-up calls, batch
    1 and 8; a model's sessions and torch timed in interleaved rounds),
    the optimized graph's op counts.

    Args:
        models: ``ModelSpec``s (config, FP checkpoint).
        quant_cfgs: preset names or quant_cfg files.
        work_dir: logs and the ONNX files go to ``work_dir/<model>``.
        num_images: evaluate the first N test images only.
        calib_samples: override ``quant_cfg.calib.num_samples``.
        cfg_options: overrides applied to every config.
        repeats: timed calls per latency.
        unsafe_load: load checkpoints with ``weights_only=False``.
        threads: ORT intra-op threads and torch threads while timing (0:
            the defaults, all cores); 1 times CPU time of the calling
            thread (robust to other processes' load).
    """
    rows = []
    for spec in models:
        runner, metrics = _runtime_runner(spec, None, work_dir, num_images,
                                          cfg_options, unsafe_load)
        model = unwrap(runner.model).eval()
        graph = ExportGraph(model)
        x = example_input(runner, 1)
        path = osp.join(runner.work_dir, 'fp32.onnx')
        swapping = weight_swapping_hooks(runner)
        for hook in swapping:  # the weights the FP test evaluated (EMA)
            hook.before_test_epoch(runner)
        export_model(model, x, path)
        cell, session = _runtime_cell(runner, graph, path, threads)
        for hook in swapping:
            hook.after_test_epoch(runner)
        model_rows = [dict(model=spec.name, quant='FP', bits='FP',
                           metrics=metrics, **cell)]
        sessions = [session]
        for name in quant_cfgs:
            quant_cfg = merge_quant_cfg(load_config(spec.config), name,
                                        calib_samples=calib_samples,
                                        cfg_options=cfg_options)
            runner, metrics = _runtime_runner(spec, quant_cfg, work_dir,
                                              num_images, cfg_options,
                                              unsafe_load)
            model = unwrap(runner.model).eval()
            path = osp.join(runner.work_dir,
                            f'{osp.splitext(osp.basename(name))[0]}.onnx')
            summary = export_model(model, x, path)
            cell, session = _runtime_cell(runner, ExportGraph(model), path,
                                          threads)
            model_rows.append(dict(
                model=spec.name, quant=name,
                bits=bits_label(quant_cfg),
                metrics=metrics,
                not_accelerated=[r.name for r in summary.not_accelerated()],
                **cell))
            sessions.append(session)
        _time_rows(model_rows, sessions, graph, x, repeats, threads)
        rows += model_rows
    return rows


def runtime_table(rows: Sequence[dict]) -> str:
    """Markdown: per row the headline metrics in torch and ORT, latency
    per image (ms) at batch 1 / 8, and the speedup of ORT over ORT FP32."""
    head = ['model', 'quant', 'metric torch', 'metric ORT', 'torch ms b1/b8',
            'ORT ms b1/b8', 'ORT vs ORT FP32 b1/b8', 'ORT int8 kernels']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    fp32 = {}
    for row in rows:
        if row['quant'] == 'FP':
            fp32[row['model']] = row['ort_ms']
        ref = fp32.get(row['model'], row['ort_ms'])
        ms = row['ort_ms']
        kernels = {k: v for k, v in row['ort_ops'].items()
                   if k.startswith('QLinear') or k in (
                       'MatMulIntegerToFloat', 'QGemm', 'ConvInteger')}
        cells = [
            row['model'], row['quant'], _fmt(primary_metrics(row['metrics'])),
            _fmt(primary_metrics(row['ort_metrics'])),
            '/'.join(f'{row["torch_ms"][b]:.1f}' for b in row['torch_ms']),
            f'{ms[1]:.1f}/{ms[8]:.1f}',
            f'{ref[1] / ms[1]:.2f}x/{ref[8] / ms[8]:.2f}x',
            ', '.join(f'{k} {v}' for k, v in kernels.items())]
        lines.append('| ' + ' | '.join(cells) + ' |')
    timing = {(r['timing']['threads'], r['timing']['clock'])
              for r in rows if 'timing' in r}
    lines += [f'\nLatency: ORT intra-op and torch threads '
              f'{threads or "default"}, clock {clock}'
              for threads, clock in sorted(timing)]
    return '\n'.join(lines)


def write_runtime_report(rows: Sequence[dict], work_dir: str) -> List[str]:
    """``benchmark_runtime.md`` (:func:`runtime_table`) and
    ``benchmark_runtime.json`` (the rows, with the ORT version and the CPU
    count) in ``work_dir``; returns their paths."""
    os.makedirs(work_dir, exist_ok=True)
    paths = [osp.join(work_dir, f'benchmark_runtime.{ext}')
             for ext in ('md', 'json')]
    with open(paths[0], 'w') as f:
        f.write(runtime_table(rows) + '\n')
    env = dict(onnxruntime=ort_version, torch=torch.__version__,
               cpus=os.cpu_count(), load_avg=os.getloadavg())
    with open(paths[1], 'w') as f:
        json.dump(dict(env=env, rows=list(rows)), f, indent=2, default=str)
    return paths


def _fmt(metrics: Dict[str, float]) -> str:
    return ', '.join(f'{k} {v:.2f}' for k, v in metrics.items())


def random_init_latency(config: str,
                        quant_cfgs: Sequence[str],
                        work_dir: str,
                        size: int = 224,
                        calib_samples: int = 4,
                        repeats: int = 10,
                        threads: int = 0) -> List[dict]:
    """Latency without data or checkpoint: ``config``'s model with random
    weights, calibrated on N(0, 1) inputs of ``size``² (a normalized
    image's statistics), as rows of :func:`runtime_benchmark` without
    metrics (torch FP32, ORT FP32, ORT QDQ per quant config); ``threads``
    as in :func:`runtime_benchmark`."""
    cfg = load_config(config)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    name = osp.splitext(osp.basename(config.split('::')[-1]))[0]
    out_dir = osp.join(work_dir, name)
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    graph = ExportGraph(MODELS.build(cfg.model).eval())
    x = torch.randn(1, 3, size, size)
    rows, sessions = [], []
    for quant in ['FP', *quant_cfgs]:
        model = copy.deepcopy(graph)
        if quant != 'FP':
            quant_cfg = merge_quant_cfg(cfg, quant, calib_samples=calib_samples)
            batches = [torch.randn(1, 3, size, size)
                       for _ in range(quant_cfg['calib']['num_samples'])]
            quantize_model(model, quant_cfg, batches)
        path = osp.join(out_dir, f'{osp.splitext(osp.basename(quant))[0]}.onnx')
        summary = export_qdq(model, (x, ), path,
                             output_names=model.output_names(model(x)))
        optimized = path.replace('.onnx', '.ort-optimized.onnx')
        sessions.append(ort_session(ort_ready(path),
                                    optimized_path=optimized,
                                    threads=threads))
        rows.append(dict(model=name, quant=quant, metrics={}, ort_metrics={},
                         ort_ops=_graph_ops(optimized), ort_ms={},
                         torch_ms={},
                         not_accelerated=[r.name for r in
                                          summary.not_accelerated()]))
    _time_rows(rows, sessions, graph, x, repeats, threads)
    return rows
