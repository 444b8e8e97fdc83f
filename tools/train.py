"""Train a model of any mmdet / mmseg / mmpretrain config (the demo models).

    python tools/train.py configs/demo/mask-rcnn_swin-mini_fpn_mnist-det.py

The upstream ``tools/train.py`` arguments; the Runner does the work. With
``--publish OUT`` the last checkpoint is also written without optimizer
state (what ``checkpoints/demo/`` ships). A thin CLI over
``mmptq.apis.train``.
"""
import argparse

import mmptq  # noqa: F401  (safe checkpoint loading, shims)
from mmptq.apis.cli import add_common_args, load_run_cfg, parse
from mmptq.apis.train import train_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
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
    return parse(parser)


def main() -> None:
    args = parse_args()
    train_model(load_run_cfg(args), resume=args.resume, seed=args.seed,
                publish=args.publish, publish_dtype=args.publish_dtype)


if __name__ == '__main__':
    main()
