"""Export a quantized model to ONNX with QuantizeLinear / DequantizeLinear
nodes carrying mmptq's calibrated scales (real int8 in ONNX Runtime).

    python tools/export.py CONFIG QUANT_CHECKPOINT --out model.onnx
    python tools/export.py CONFIG FP_CHECKPOINT --quant-cfg w8a8 --out model.onnx

QUANT_CHECKPOINT comes from ``tools/quantize.py``; an FP checkpoint is
calibrated first with ``--quant-cfg``. Classifiers export whole (logits),
segmentors their logits, detectors backbone + neck + dense head raw
outputs. Prints which quantizers stay float (not int8-accelerated). A thin
CLI over ``mmptq.apis.export``.
"""
import argparse

import mmptq  # noqa: F401  (registers mmptq's loops)
from mmptq.apis.cli import add_common_args, add_quant_args, load_cfg, parse
from mmptq.apis.export import export_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_common_args(parser)
    add_quant_args(parser)
    parser.add_argument('--out', required=True,
                        help='path of the ONNX file (.onnx)')
    return parse(parser)


def main() -> None:
    args = parse_args()
    cfg, quant_cfg = load_cfg(args)
    export_checkpoint(cfg, args.checkpoint, args.out, quant_cfg,
                      unsafe_load=args.unsafe_load)


if __name__ == '__main__':
    main()
