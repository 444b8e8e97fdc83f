"""The test and quantize workflows of ``tools/test.py`` and
``tools/quantize.py``: an OpenMMLab config whose test loop quantizes (or
restores a quantized checkpoint) and evaluates, run by its Runner."""
from typing import Optional

from mmengine.config import Config
from mmengine.evaluator import DumpResults

from mmptq.core import QuantConfig
from mmptq.engine import install_safe_loader
from mmptq.utils.files import make_dir, prepare_out_path
from .runner_setup import (build_runner, configure_quant_test,
                           enable_visualization)


def run_test(cfg: Config,
               checkpoint: Optional[str],
               quant_cfg: Optional[QuantConfig],
               fp_baseline: bool = False,
               out: Optional[str] = None,
               show_dir: Optional[str] = None,
               unsafe_load: bool = False) -> dict:
    """Evaluate ``checkpoint`` with the config's evaluator: quantized with
    ``quant_cfg`` (FP too with ``fp_baseline``), as it is when it is a
    quantized checkpoint, or FP when nothing asks to quantize. ``out``:
    dump the predictions to a pickle file; ``show_dir``: draw them."""
    if out is not None and not out.endswith(('.pkl', '.pickle')):
        raise ValueError('--out must be a .pkl / .pickle file')
    if out is not None:
        prepare_out_path(out, checkpoint, '--out')
    if show_dir:
        make_dir(show_dir, '--show-dir')
    configure_quant_test(cfg, checkpoint, quant_cfg, fp_baseline=fp_baseline,
                         unsafe_load=unsafe_load)
    if show_dir:
        enable_visualization(cfg, show_dir)
    install_safe_loader(unsafe_load)  # a model may load weights when built
    runner = build_runner(cfg)
    if out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))
    return runner.test()


def quantize_checkpoint(cfg: Config,
                        checkpoint: Optional[str],
                        quant_cfg: Optional[QuantConfig],
                        out: str,
                        evaluate: bool = False,
                        unsafe_load: bool = False) -> dict:
    """Calibrate the FP ``checkpoint`` with ``quant_cfg`` and save the
    quantized checkpoint to ``out`` (``tools/test.py`` evaluates it without
    calibrating again); with ``evaluate``, evaluate it too."""
    if quant_cfg is None:
        raise ValueError('nothing to quantize with: pass --quant-cfg (a '
                         'preset or a file) or add quant_cfg to the config')
    prepare_out_path(out, checkpoint, '--out')
    configure_quant_test(cfg, checkpoint, quant_cfg, save_quantized=out,
                         evaluate=evaluate, unsafe_load=unsafe_load)
    install_safe_loader(unsafe_load)  # a model may load weights when built
    return build_runner(cfg).test()
