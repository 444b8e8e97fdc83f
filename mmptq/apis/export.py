"""The export workflow of ``tools/export.py``: a quantized OpenMMLab model
(restored from a quantized checkpoint, or calibrated from an FP one) to an
ONNX graph with QDQ nodes (``mmptq.export``)."""
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from mmptq.core import QuantConfig
from mmptq.engine import (install_safe_loader, is_quantized_checkpoint,
                          load_checkpoint_file, unwrap)
from mmptq.export import ExportGraph, ExportSummary, export_qdq
from .runner_setup import build_runner, configure_quant_test
from .test import prepare_out_path


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
                      unsafe_load: bool = False) -> ExportSummary:
    """Export ``checkpoint`` (quantized by ``tools/quantize.py``, or FP and
    calibrated here with ``quant_cfg``) to the ONNX file ``out``, for the
    first test image's shape (the batch dim is dynamic). The output path
    is checked before any work and is never the checkpoint.

    Args:
        cfg: the model's config (its test dataloader gives the example
            input; its calibration set the batches of an FP checkpoint).
        checkpoint: a quantized or FP checkpoint.
        out: the .onnx file to write.
        quant_cfg: how to quantize an FP checkpoint (ignored, with a
            warning, for a quantized one).
        unsafe_load: load checkpoints with ``weights_only=False``.
    """
    prepare_out_path(out, checkpoint, '--out')
    if not out.endswith('.onnx'):
        raise ValueError(f'--out {out}: give an .onnx file')
    runner = quantized_runner(cfg, checkpoint, quant_cfg, unsafe_load)
    summary = export_model(unwrap(runner.model), example_input(runner), out)
    print_log(summary.table(), logger='current')
    return summary
