"""Test (and quantize) a model of any mmdet / mmseg / mmpretrain config.

    python -m mmptq.tools.test CONFIG [CHECKPOINT] --quant-cfg w4a4 \\
        [--fp-baseline]        (in a checkout: python tools/test.py ...)

The arguments of the upstream ``tools/test.py`` plus the quantization
ones. Without ``--quant-cfg`` (and without a ``quant_cfg`` section in the
config) it evaluates the FP model like the upstream tool; a quantized
checkpoint from ``tools/quantize.py`` is evaluated without calibrating.
A thin CLI over ``mmptq.apis.test``.
"""
import argparse
from typing import Optional, Sequence

from mmptq.tools.args import (add_common_args, add_quant_args, description,
                              load_stack, parse)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    add_common_args(parser, checkpoint='optional')
    parser.add_argument('--out', help='dump predictions to a pickle file')
    parser.add_argument('--show-dir', help='draw predictions into this dir')
    add_quant_args(parser)
    parser.add_argument('--fp-baseline', action='store_true',
                        help='evaluate FP too and print both side by side')
    return parse(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    load_stack()
    from mmptq.apis.cli import load_cfg
    from mmptq.apis.test import run_test
    cfg, quant_cfg = load_cfg(args)
    run_test(cfg, args.checkpoint, quant_cfg, fp_baseline=args.fp_baseline,
             out=args.out, show_dir=args.show_dir,
             unsafe_load=args.unsafe_load)


if __name__ == '__main__':
    main()
