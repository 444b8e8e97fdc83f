"""Train a model of any mmdet / mmseg / mmpretrain config (the demo models).

    python tools/train.py configs/demo/mask-rcnn_swin-mini_fpn_mnist-det.py

The upstream ``tools/train.py`` arguments; the Runner does the work. With
``--publish OUT`` the last checkpoint is also written without optimizer
state (what ``checkpoints/demo/`` ships). A thin CLI over
``mmptq.apis.runner_setup``.
"""
import argparse
import os.path as osp

import torch

import mmptq  # noqa: F401  (safe checkpoint loading, shims)
from mmptq.apis.cli import add_common_args, load_run_cfg, parse
from mmptq.apis.runner_setup import build_runner
from mmptq.engine import install_safe_loader, publish_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_common_args(parser, checkpoint=False)
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
    cfg = load_run_cfg(args)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.seed is not None:
        cfg.randomness = dict(cfg.get('randomness', {}), seed=args.seed)
    install_safe_loader()  # --resume / load_from with weights_only=True
    runner = build_runner(cfg)
    runner.train()
    if args.publish and runner.rank == 0:
        last = osp.join(cfg.work_dir, 'last_checkpoint')
        with open(last) as f:
            src = f.read().strip()
        sha = publish_checkpoint(src, args.publish,
                                 getattr(torch, args.publish_dtype))
        runner.logger.info(f'published {src} -> {args.publish} '
                           f'(sha256 {sha[:8]})')


if __name__ == '__main__':
    main()
