"""Export a quantized model to ONNX with QuantizeLinear / DequantizeLinear
nodes carrying mmptq's calibrated scales (real int8 in ONNX Runtime).

    python -m mmptq.tools.export CONFIG QUANT_CHECKPOINT --out model.onnx
    python -m mmptq.tools.export CONFIG FP_CHECKPOINT \\
        --quant-cfg w8a8_deploy --out model.onnx [--ort]
                               (in a checkout: python tools/export.py ...)

QUANT_CHECKPOINT comes from ``tools/quantize.py``; an FP checkpoint is
calibrated first with ``--quant-cfg``. Classifiers export whole (logits),
segmentors their logits, detectors backbone + neck + dense head raw
outputs. Prints which quantizers stay float (not int8-accelerated).
``--ort`` also writes ``model.ort.onnx``, the graph rewritten for ONNX
Runtime's CPU int8 kernels (``mmptq.export.ort_graph``). A thin CLI over
``mmptq.apis.export``.
"""
import argparse
from typing import Optional, Sequence

from mmptq.tools.args import (add_common_args, add_quant_args, description,
                              load_stack, parse)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    add_common_args(parser)
    add_quant_args(parser)
    parser.add_argument('--out', required=True,
                        help='path of the ONNX file (.onnx)')
    parser.add_argument('--ort', action='store_true',
                        help='also write <out>.ort.onnx for ONNX Runtime '
                        '(CPU): the 1x1 convolutions that feed residual adds '
                        'as int8 MatMulIntegerToFloat, ...')
    return parse(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    load_stack()
    from mmptq.apis.cli import load_cfg
    from mmptq.apis.export import export_checkpoint
    cfg, quant_cfg = load_cfg(args)
    export_checkpoint(cfg, args.checkpoint, args.out, quant_cfg,
                      unsafe_load=args.unsafe_load, ort=args.ort)


if __name__ == '__main__':
    main()
