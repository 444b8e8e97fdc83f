"""Runner loops: ``CalibrationLoop`` quantizes the runner's model on
calibration batches, ``QuantTestLoop`` loads the checkpoint, quantizes (or
restores a quantized checkpoint) and evaluates with the config's evaluator.
"""
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import BaseLoop, TestLoop
from torch import nn

from mmptq.core import (META_KEY, QuantConfig, QuantSummary,
                        quantize_model, resolve_quant_cfg)
from mmptq.registry import LOOPS
from mmptq.utils.files import prepare_out_path
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


#: the methods a hook moves weights into the model with around a test epoch
#: (``Hook.before_test_epoch`` calls ``_before_epoch``)
_TEST_EPOCH_METHODS = ('before_test_epoch', 'after_test_epoch',
                       '_before_epoch', '_after_epoch')


def weight_swapping_hooks(runner) -> List[Hook]:
    """The runner's hooks that swap weights into the model around a test
    epoch: those that define a test-epoch callback and hold a module (the
    model or a copy of it). mmengine's and mmpretrain's ``EMAHook`` hold
    ``src_model`` and ``ema_model`` and swap their parameters (and, with
    ``update_buffers``, buffers) by position in ``before_test_epoch`` and
    back in ``after_test_epoch``; other EMA variants (mmdet's
    ``ExpMomentumEMA``, ...) are ``ema_type`` of these hooks. Run after
    ``before_run`` (which builds the EMA copy)."""
    found = []
    for hook in runner.hooks:
        epoch = any(
            getattr(type(hook), m, None) is not getattr(Hook, m)
            for m in _TEST_EPOCH_METHODS)
        holds = any(isinstance(v, nn.Module)
                    for v in getattr(hook, '__dict__', {}).values())
        if epoch and holds:
            found.append(hook)
    return found


@contextmanager
def detached_hooks(runner, hooks: List[Hook]) -> Iterator[None]:
    """Take ``hooks`` out of ``runner.hooks`` (the list ``call_hook``
    walks) for the duration, then put them back where they were."""
    hook_list = runner.hooks
    places = [(hook_list.index(h), h) for h in hooks]
    for _, hook in places:
        hook_list.remove(hook)
    try:
        yield
    finally:
        for index, hook in sorted(places, key=lambda p: p[0]):
            hook_list.insert(index, hook)


@LOOPS.register_module()
class QuantTestLoop(TestLoop):
    """Test loop for quantized evaluation.

    Loads ``checkpoint`` itself (safely; ``unsafe_load`` opts out): an FP
    checkpoint is quantized with ``quant_cfg`` (default: the config's
    ``quant_cfg``) by a ``CalibrationLoop``; a quantized checkpoint (from
    ``tools/quantize.py``) is restored without calibrating. Then evaluates
    with the config's evaluator.

    Hooks see the checkpoint as under the upstream ``Runner.load_checkpoint``:
    ``after_load_checkpoint(checkpoint=...)`` runs before the state dict is
    loaded into the model (hooks may rewrite it); when the checkpoint is the
    config's ``load_from`` the Runner has already done both. So an
    ``EMAHook`` copies the checkpoint into its EMA model and an FP test
    (no ``quant_cfg``, or ``fp_baseline``) evaluates exactly what the
    upstream ``tools/test.py`` evaluates: the weights that the hooks'
    ``before_test_epoch`` swaps in.

    A quantized model must hold those same weights, and no hook may swap
    anything into it (``EMAHook`` zips the EMA copy's parameters and buffers
    with the model's by position; the quantized model has other modules and
    quantizer buffers). So the weight-swapping hooks
    (:func:`weight_swapping_hooks`) first get their ``before_test_epoch``
    on the FP model: the model then holds the weights the upstream test
    epoch evaluates, and those are quantized. Then these hooks are detached
    from the runner (:func:`detached_hooks`) for calibration and the
    quantized evaluation: nothing swaps into, or back out of, the quantized
    model (their ``after_test_epoch`` would put the displaced FP weights
    into it). A restored quantized checkpoint holds the weights it was made
    from; the hooks are detached for its evaluation too. Other hooks run as
    usual.

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
        # the upstream tools/test.py sets load_from: the Runner then loaded
        # it and called the hooks' after_load_checkpoint already
        self.loaded_by_runner = checkpoint is None and \
            bool(runner.cfg.get('load_from'))
        if checkpoint is None:
            checkpoint = runner.cfg.get('load_from')
        if quant_cfg is None:
            quant_cfg = runner.cfg.get('quant_cfg')
        self.quant_cfg = None if quant_cfg is None else resolve_quant_cfg(
            quant_cfg)
        if save_quantized:  # before any work; never over the input
            prepare_out_path(save_quantized, checkpoint,
                             'test_cfg.save_quantized')
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
            if not self.loaded_by_runner:  # as Runner.load_checkpoint
                self.runner.call_hook('after_load_checkpoint',
                                      checkpoint=checkpoint)
        else:
            print_log('mmptq: no checkpoint given, quantizing the weights '
                      'the model was built with', logger='current', level=30)
        quantized = checkpoint is not None and \
            is_quantized_checkpoint(checkpoint)
        if quantized and self.quant_cfg is not None:
            self._check_same_quant_cfg(checkpoint)
        if not quantized:
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
        swapping = weight_swapping_hooks(self.runner)
        if swapping:
            names = [type(h).__name__ for h in swapping]
            print_log(f'mmptq: {names} swap weights into the model for a '
                      'test; ' + ('the quantized checkpoint is evaluated '
                                   'without them' if quantized else
                                   'their swap is applied before quantizing '
                                   'and they are detached from the '
                                   'quantized run'), logger='current')
        if not quantized:
            for hook in swapping:  # the weights the upstream test evaluates
                hook.before_test_epoch(self.runner)
        with detached_hooks(self.runner, swapping):
            return self._run_quantized(model, checkpoint, quantized,
                                       fp_metrics, timings)

    def _check_same_quant_cfg(self, checkpoint: dict) -> None:
        """A quantized checkpoint is evaluated with the setting it was made
        with: a quant_cfg given beside it (``--quant-cfg``, the config's)
        must be that setting (``calib`` aside: calibration is done)."""
        made = resolve_quant_cfg(checkpoint['meta'][META_KEY]['quant_cfg'])
        differ = sorted(k for k in set(made) | set(self.quant_cfg)
                        if k != 'calib'
                        and made.get(k) != self.quant_cfg.get(k))
        if differ:
            raise ValueError(
                f'{self.checkpoint} is a quantized checkpoint whose quant_cfg '
                f'differs from the one given (--quant-cfg or the config\'s '
                f'quant_cfg) in {differ}: evaluate it without --quant-cfg, or '
                f'quantize the FP checkpoint with the new setting')

    def _run_quantized(self, model, checkpoint, quantized: bool,
                       fp_metrics: Optional[dict], timings: dict) -> dict:
        if quantized:
            summary = load_quantized_checkpoint(model, checkpoint,
                                                self.checkpoint)
        else:
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
