"""Argument groups shared by mmptq's tools (their CLIs stay thin)."""
import argparse
import os
from typing import Optional, Tuple

from mmengine.config import Config, DictAction

from mmptq.core import (QuantConfig, list_presets, merge_quant_cfg,
                        model_options)
from .runner_setup import load_config, set_work_dir


class StoreOnce(argparse.Action):
    """``store``, but an option given twice is an error (argparse keeps the
    last silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = getattr(namespace, f'_{self.dest}_given', None)
        if seen is not None:
            raise argparse.ArgumentError(
                self, f'given twice ({seen!r}, then {values!r}); give it '
                'once')
        setattr(namespace, f'_{self.dest}_given', values)
        setattr(namespace, self.dest, values)


def add_quant_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--quant-cfg', action=StoreOnce,
                        help='a preset name (' + ', '.join(list_presets())
                        + ') or the path of a config with a quant_cfg '
                        'section')
    parser.add_argument('--w-bits', type=int, action=StoreOnce,
                        help='override weight bits')
    parser.add_argument('--a-bits', type=int, action=StoreOnce,
                        help='override activation bits')
    parser.add_argument('--calib-samples', type=int, action=StoreOnce,
                        help='number of calibration images')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load checkpoints with weights_only=False '
                        '(only for files you trust)')


def add_common_args(parser: argparse.ArgumentParser,
                    checkpoint: str = 'required') -> None:
    """config, checkpoint ('required', 'optional' or 'none') and the
    Runner's options."""
    parser.add_argument('config', help='config file path')
    if checkpoint == 'optional':
        parser.add_argument(
            'checkpoint', nargs='?',
            help='checkpoint file; leave it out for a model that loads its '
            'weights when it is built (e.g. BoxPromptSAM: SAM and detector '
            'checkpoints in the config)')
    elif checkpoint == 'required':
        parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and results go')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line; torch.distributed.launch passes
    --local-rank, torchrun sets LOCAL_RANK."""
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_run_cfg(args: argparse.Namespace) -> Config:
    """The config with --launcher, --cfg-options and --work-dir applied."""
    cfg = load_config(args.config)
    cfg.launcher = args.launcher
    if model_options(args.cfg_options):
        cfg.merge_from_dict(model_options(args.cfg_options))
    set_work_dir(cfg, args.config, args.work_dir)
    return cfg


def load_cfg(
        args: argparse.Namespace) -> Tuple[Config, Optional[QuantConfig]]:
    """The config with the CLI options applied, and its quant_cfg merged
    with --quant-cfg / --w-bits / --a-bits / --calib-samples; ``quant_cfg.*``
    keys of --cfg-options apply last (over the preset too), e.g.
    ``quant_cfg.reconstruction.iters=500``."""
    cfg = load_run_cfg(args)
    if cfg.get('custom_imports'):  # their quantizers and observers, which
        # resolving the quant_cfg checks (the Runner imports them later)
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
    return cfg, merge_quant_cfg(cfg, args.quant_cfg, args.w_bits,
                                args.a_bits, args.calib_samples,
                                args.cfg_options)
