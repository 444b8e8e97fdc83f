"""The training workflow of ``tools/train.py`` (how the demo models were
made): the config's Runner trains; the last checkpoint can be published
without optimizer state."""
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.config import Config

from mmptq.engine import install_safe_loader, publish_checkpoint
from .runner_setup import build_runner


def train_model(cfg: Config,
                resume: Optional[str] = None,
                seed: Optional[int] = None,
                publish: Optional[str] = None,
                publish_dtype: str = 'float32',
                publish_exclude: Sequence[str] = ()) -> None:
    """Train with the config's Runner. ``resume``: 'auto' (the latest
    checkpoint in the work_dir) or a checkpoint path; ``publish``: write the
    last checkpoint's weights (no optimizer state) there, floating-point
    tensors in ``publish_dtype``, without the keys under the prefixes
    ``publish_exclude``."""
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        cfg.resume, cfg.load_from = True, resume
    if seed is not None:
        cfg.randomness = dict(cfg.get('randomness', {}), seed=seed)
    install_safe_loader()  # resume / load_from with weights_only=True
    runner = build_runner(cfg)
    runner.train()
    if publish and runner.rank == 0:
        with open(osp.join(cfg.work_dir, 'last_checkpoint')) as f:
            src = f.read().strip()
        sha = publish_checkpoint(src, publish, getattr(torch, publish_dtype),
                                 tuple(publish_exclude))
        runner.logger.info(f'published {src} -> {publish} '
                           f'(sha256 {sha[:8]})')
