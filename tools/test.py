"""Test (and quantize) a model of any mmdet / mmseg / mmpretrain config.

    python tools/test.py CONFIG [CHECKPOINT] --quant-cfg w4a4 [--fp-baseline]

The arguments of the upstream ``tools/test.py`` plus the quantization
ones. Without ``--quant-cfg`` (and without a ``quant_cfg`` section in the
config) it evaluates the FP model like the upstream tool; a quantized
checkpoint from ``tools/quantize.py`` is evaluated without calibrating.
A thin CLI over ``mmptq.apis.test``.
"""
import argparse

import mmptq  # noqa: F401  (registers mmptq's loops)
from mmptq.apis.cli import add_common_args, add_quant_args, load_cfg, parse
from mmptq.apis.test import run_test


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_common_args(parser, checkpoint='optional')
    parser.add_argument('--out', help='dump predictions to a pickle file')
    parser.add_argument('--show-dir', help='draw predictions into this dir')
    add_quant_args(parser)
    parser.add_argument('--fp-baseline', action='store_true',
                        help='evaluate FP too and print both side by side')
    return parse(parser)


def main() -> None:
    args = parse_args()
    cfg, quant_cfg = load_cfg(args)
    run_test(cfg, args.checkpoint, quant_cfg, fp_baseline=args.fp_baseline,
             out=args.out, show_dir=args.show_dir,
             unsafe_load=args.unsafe_load)


if __name__ == '__main__':
    main()
