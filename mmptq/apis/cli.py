"""The config of a parsed command line (``mmptq.tools``): loaded, with the
CLI options applied and its quant_cfg merged. The argument groups are in
``mmptq.tools.args`` (parsing imports no torch)."""
import argparse
from typing import Optional, Tuple

from mmengine.config import Config

from mmptq.core import QuantConfig, merge_quant_cfg, model_options
from .runner_setup import load_config, set_work_dir


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
