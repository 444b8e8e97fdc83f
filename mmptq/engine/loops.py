"""Runner loops: ``CalibrationLoop`` quantizes the runner's model on
calibration batches, ``QuantTestLoop`` loads the checkpoint, quantizes (or
restores a quantized checkpoint) and evaluates with the config's evaluator.
"""
import time
from typing import Optional

from mmengine.logging import print_log
from mmengine.runner import BaseLoop, TestLoop

from mmptq.core import (QuantConfig, QuantSummary, quantize_model,
                        resolve_quant_cfg)
from mmptq.registry import LOOPS
from .calib_data import build_calib_dataloader
from .checkpoint import (install_safe_loader, is_quantized_checkpoint,
                         load_checkpoint_file, load_quantized_checkpoint,
                         load_state_checked, save_quantized_checkpoint, unwrap)
from .report import write_results


@LOOPS.register_module()
class CalibrationLoop(BaseLoop):
    """Quantize ``runner.model`` in place with ``quant_cfg`` (resolved
    here when it is not a :class:`QuantConfig` yet): transforms, op
    wrapping, calibration on ``quant_cfg.calib`` batches, reconstruction,
    freezing. Hooks see the stages through ``before_calibration`` and
    ``after_calibration``; reconstruction state goes to the work_dir."""

    def __init__(self, runner, quant_cfg, dataloader=None) -> None:
        self.quant_cfg: QuantConfig = resolve_quant_cfg(quant_cfg)
        super().__init__(
            runner, dataloader or build_calib_dataloader(
                runner, self.quant_cfg['calib']))

    def run(self) -> QuantSummary:
        start = time.perf_counter()
        print_log(f'mmptq: calibrating on {len(self.dataloader.dataset)} '
                  f'samples in {len(self.dataloader)} batches',
                  logger='current')
        _, summary = quantize_model(
            unwrap(self.runner.model), self.quant_cfg, self.dataloader,
            stage_callback=self.runner.call_hook,
            work_dir=self.runner.work_dir)
        self.seconds = time.perf_counter() - start
        print_log(f'mmptq: calibration took {self.seconds:.1f} s',
                  logger='current')
        return summary


@LOOPS.register_module()
class QuantTestLoop(TestLoop):
    """Test loop for quantized evaluation.

    Loads ``checkpoint`` itself (safely; ``unsafe_load`` opts out): an FP
    checkpoint is quantized with ``quant_cfg`` (default: the config's
    ``quant_cfg``) by a ``CalibrationLoop``; a quantized checkpoint (from
    ``tools/quantize.py``) is restored without calibrating. Then evaluates
    with the config's evaluator.

    Args:
        checkpoint: the FP or quantized checkpoint; a quantized one needs
            the quantized structure before its state dict loads, so this
            loop loads it. Default: the config's ``load_from`` (the
            upstream ``tools/test.py``), which the Runner then also loads
            into the FP model first (a quantized checkpoint with
            unexpected-key warnings); mmptq's ``tools/test.py`` passes it
            here and leaves ``load_from`` empty.
        quant_cfg: the quantization config (merged over the defaults).
        fp_baseline: evaluate the FP model first, in the same run.
        save_quantized: path to save the quantized checkpoint to.
        evaluate: evaluate after quantizing (False: quantize and save only).
        unsafe_load: load checkpoints with ``weights_only=False``.
    """

    def __init__(self,
                 runner,
                 dataloader,
                 evaluator,
                 fp16: bool = False,
                 checkpoint: Optional[str] = None,
                 quant_cfg: Optional[dict] = None,
                 fp_baseline: bool = False,
                 save_quantized: Optional[str] = None,
                 evaluate: bool = True,
                 unsafe_load: bool = False) -> None:
        super().__init__(runner, dataloader, evaluator, fp16)
        if checkpoint is None:  # the upstream tools/test.py sets load_from
            checkpoint = runner.cfg.get('load_from')
        if quant_cfg is None:
            quant_cfg = runner.cfg.get('quant_cfg')
        self.quant_cfg = None if quant_cfg is None else resolve_quant_cfg(
            quant_cfg)
        self.checkpoint = checkpoint
        self.fp_baseline = fp_baseline
        self.save_quantized = save_quantized
        self.evaluate = evaluate
        self.unsafe_load = unsafe_load
        install_safe_loader(unsafe_load)

    def run(self) -> dict:
        timings = {}
        fp_metrics = None
        model = unwrap(self.runner.model)
        checkpoint = None
        if self.checkpoint:
            checkpoint = load_checkpoint_file(self.checkpoint,
                                              unsafe=self.unsafe_load)
        else:
            print_log('mmptq: no checkpoint given, quantizing the weights '
                      'the model was built with', logger='current', level=30)
        if checkpoint is not None and is_quantized_checkpoint(checkpoint):
            if self.quant_cfg is not None:
                print_log('mmptq: the checkpoint is quantized; its own '
                          'quant_cfg is used', logger='current', level=30)
            summary = load_quantized_checkpoint(model, checkpoint,
                                                self.checkpoint)
        else:
            if checkpoint is not None:
                load_state_checked(model,
                                   checkpoint.get('state_dict', checkpoint),
                                   self.checkpoint)
            if self.quant_cfg is None:  # nothing asks to quantize: upstream
                return super().run()
            if self.fp_baseline:
                start = time.perf_counter()
                fp_metrics = super().run()
                timings['fp_eval_s'] = time.perf_counter() - start
            calib = CalibrationLoop(self.runner, self.quant_cfg)
            summary = calib.run()
            timings['calibration_s'] = calib.seconds
        model.eval()
        if self.save_quantized:
            save_quantized_checkpoint(model, summary, self.save_quantized)
        metrics = {}
        if self.evaluate:
            start = time.perf_counter()
            metrics = super().run()
            timings['quant_eval_s'] = time.perf_counter() - start
        write_results(self.runner.work_dir, metrics, fp_metrics, summary,
                      timings, self.checkpoint)
        return metrics
