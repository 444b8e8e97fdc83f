"""Train a model of any mmdet / mmseg / mmpretrain config (the demo models).

    python -m mmptq.tools.train configs/demo/mask-rcnn_swin-mini_fpn_mnist-det.py
                               (in a checkout: python tools/train.py ...)

The upstream ``tools/train.py`` arguments; the Runner does the work. With
``--publish OUT`` the last checkpoint is also written without optimizer
state (what ``checkpoints/demo/`` ships). A thin CLI over
``mmptq.apis.train``.
"""
import argparse
from typing import Optional, Sequence

from mmptq.tools.args import add_common_args, description, load_stack, parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    add_common_args(parser, checkpoint='none')
    parser.add_argument('--resume', nargs='?', const='auto',
                        help='resume from a checkpoint, or (no value) from '
                        'the latest one in the work_dir')
    parser.add_argument('--seed', type=int, help='random seed')
    parser.add_argument('--publish', metavar='OUT',
                        help='after training, save the weights (no '
                        'optimizer state) of the last checkpoint to OUT')
    parser.add_argument('--publish-dtype', choices=['float32', 'float16'],
                        default='float32',
                        help='store the published floating-point weights '
                        'in this dtype (float16 halves the file)')
    parser.add_argument('--publish-exclude', nargs='+', default=[],
                        metavar='PREFIX',
                        help='leave the weights under these key prefixes out '
                        'of the published file (a frozen pretrained part the '
                        'config reads from elsewhere, e.g. text_encoder.)')
    return parse(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    load_stack()  # safe checkpoint loading, shims
    from mmptq.apis.cli import load_run_cfg
    from mmptq.apis.train import train_model
    train_model(load_run_cfg(args), resume=args.resume, seed=args.seed,
                publish=args.publish, publish_dtype=args.publish_dtype,
                publish_exclude=args.publish_exclude)


if __name__ == '__main__':
    main()
