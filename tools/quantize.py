"""Calibrate a model and save a quantized checkpoint.

    python tools/quantize.py CONFIG FP_CHECKPOINT --quant-cfg w4a4 --out q.pth

The checkpoint holds the weights, every quantizer's parameters, the
resolved quant_cfg and the mmptq version; ``tools/test.py CONFIG q.pth``
evaluates it without calibrating again. A thin CLI over ``mmptq.apis.test``.
"""
import argparse

import mmptq  # noqa: F401  (registers mmptq's loops)
from mmptq.apis.cli import add_common_args, add_quant_args, load_cfg, parse
from mmptq.apis.test import quantize_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_common_args(parser, checkpoint='optional')
    add_quant_args(parser)
    parser.add_argument('--out', required=True,
                        help='path of the quantized checkpoint (.pth)')
    parser.add_argument('--eval', action='store_true',
                        help='also evaluate the quantized model')
    return parse(parser)


def main() -> None:
    args = parse_args()
    cfg, quant_cfg = load_cfg(args)
    quantize_checkpoint(cfg, args.checkpoint, quant_cfg, args.out,
                        evaluate=args.eval, unsafe_load=args.unsafe_load)


if __name__ == '__main__':
    main()
