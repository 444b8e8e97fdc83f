"""Calibrate a model and save a quantized checkpoint.

    python -m mmptq.tools.quantize CONFIG FP_CHECKPOINT --quant-cfg w4a4 \\
        --out q.pth            (in a checkout: python tools/quantize.py ...)

The checkpoint holds the weights, every quantizer's parameters, the
resolved quant_cfg and the mmptq version; ``tools/test.py CONFIG q.pth``
evaluates it without calibrating again. A thin CLI over ``mmptq.apis.test``.
"""
import argparse
from typing import Optional, Sequence

from mmptq.tools.args import (add_common_args, add_quant_args, description,
                              load_stack, parse)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    add_common_args(parser, checkpoint='optional')
    add_quant_args(parser)
    parser.add_argument('--out', required=True,
                        help='path of the quantized checkpoint (.pth)')
    parser.add_argument('--eval', action='store_true',
                        help='also evaluate the quantized model')
    return parse(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    load_stack()
    from mmptq.apis.cli import load_cfg
    from mmptq.apis.test import quantize_checkpoint
    cfg, quant_cfg = load_cfg(args)
    quantize_checkpoint(cfg, args.checkpoint, quant_cfg, args.out,
                        evaluate=args.eval, unsafe_load=args.unsafe_load)


if __name__ == '__main__':
    main()
