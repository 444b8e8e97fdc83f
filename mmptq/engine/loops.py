"""Runner loops: ``CalibrationLoop`` quantizes the runner's model on
calibration batches, ``QuantTestLoop`` loads the checkpoint, quantizes (or
restores a quantized checkpoint) and evaluates with the config's evaluator.
"""
import copy
import json
import os.path as osp
import time
from typing import Dict, Optional

import torch
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import DATASETS
from mmengine.runner import BaseLoop, TestLoop
from torch.utils.data import DataLoader, Subset

import mmptq
from mmptq.apis import QuantSummary, quantize_model, resolve_quant_cfg
from mmptq.apis.restore import (META_KEY, is_quantized_checkpoint, quant_meta,
                                restore_quantized)
from mmptq.registry import HOOKS, LOOPS, build_checked
from .checkpoint import install_safe_loader, load_checkpoint_file

SPLITS = ('train', 'val', 'test')


def _innermost(dataset_cfg: dict) -> list:
    """The dataset configs that hold a pipeline, through dataset wrappers
    (RepeatDataset, ClassBalancedDataset, ConcatDataset, ...)."""
    if 'pipeline' in dataset_cfg:
        return [dataset_cfg]
    if 'dataset' in dataset_cfg:
        return _innermost(dataset_cfg['dataset'])
    if 'datasets' in dataset_cfg:
        return [d for sub in dataset_cfg['datasets'] for d in _innermost(sub)]
    return [dataset_cfg]


def build_calib_dataloader(runner, calib: dict) -> DataLoader:
    """Calibration batches from ``quant_cfg.calib``: ``num_samples`` images
    of the ``split`` dataset, drawn with ``seed``, through the *test*
    pipeline; or an explicit ``dataloader`` config. Each rank of a
    distributed run gets its shard (mmengine's DefaultSampler)."""
    if calib.get('dataloader'):
        return runner.build_dataloader(calib['dataloader'])
    num = calib['num_samples']
    if not isinstance(num, int) or num <= 0:
        raise ValueError(f'quant_cfg.calib.num_samples={num!r}: calibration '
                         f'needs at least one sample')
    split = calib['split']
    source = runner.cfg.get(f'{split}_dataloader') if split in SPLITS else None
    if not source:
        raise ValueError(f'quant_cfg.calib.split={split!r}: the config has no '
                         f'{split}_dataloader; use one of {SPLITS} or give '
                         f'quant_cfg.calib.dataloader')
    dataset_cfg = copy.deepcopy(source['dataset'])
    test_pipeline = _innermost(runner.cfg.test_dataloader['dataset'])[0].get(
        'pipeline')
    for inner in _innermost(dataset_cfg):
        inner['pipeline'] = copy.deepcopy(test_pipeline)
    dataset = DATASETS.build(dataset_cfg)
    if len(dataset) == 0:
        raise ValueError(f'the {split} dataset is empty: no calibration data')
    g = torch.Generator().manual_seed(calib['seed'])
    indices = torch.randperm(len(dataset), generator=g)[:num].sort().values
    loader = dict(
        dataset=Subset(dataset, indices.tolist()),
        batch_size=calib['batch_size'],
        num_workers=calib.get('num_workers', 0),
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=runner.cfg.test_dataloader.get(
            'collate_fn', dict(type='pseudo_collate')))
    return runner.build_dataloader(loader, seed=calib['seed'])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


def load_state_checked(model: torch.nn.Module, state: Dict, path: str,
                       quantized: bool = False) -> None:
    """Load ``state`` (from checkpoint ``path``) into ``model``; missing
    keys or shape mismatches are errors that name the checkpoint, keys the
    model does not use are a warning (an error for quantized checkpoints).
    A ``module.`` prefix (DDP) is dropped."""
    model = unwrap(model)
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state.items()}
    kind = 'quantized checkpoint' if quantized else 'checkpoint'
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # strict=False still fails on shapes
        shapes = [line.strip() for line in str(e).splitlines()
                  if 'size mismatch' in line]
        if not shapes:
            raise
        raise ValueError(
            f'{kind} {path} does not match the model of this config: '
            f'{len(shapes)} tensors differ in shape, {shapes[:3]}. Check '
            f'that config and checkpoint belong together (num_classes, '
            f'channels, ...)') from None
    if result.missing_keys or (quantized and result.unexpected_keys):
        raise ValueError(
            f'{kind} {path} does not match the model of this config: '
            f'{len(result.missing_keys)} missing keys '
            f'{result.missing_keys[:5]}, {len(result.unexpected_keys)} '
            f'unexpected keys {result.unexpected_keys[:5]}. Check that '
            f'config and checkpoint belong together'
            + (' and that the quantized checkpoint was made from this '
               'config' if quantized else ''))
    if result.unexpected_keys:
        print_log(f'mmptq: checkpoint keys not used by the model: '
                  f'{result.unexpected_keys[:10]}', logger='current',
                  level=30)


@LOOPS.register_module()
class CalibrationLoop(BaseLoop):
    """Quantize ``runner.model`` in place with ``quant_cfg``: transforms,
    op wrapping, calibration on ``quant_cfg.calib`` batches, freezing.

    Hooks see the stages through ``before_calibration`` and
    ``after_calibration``; ``quant_cfg.reconstruction`` (a hook config,
    e.g. ``dict(type='QDropReconstruction')``) is registered in the runner
    and runs at the latter."""

    def __init__(self, runner, quant_cfg: Optional[dict],
                 dataloader=None) -> None:
        self.quant_cfg = resolve_quant_cfg(quant_cfg)
        super().__init__(
            runner, dataloader or build_calib_dataloader(
                runner, self.quant_cfg['calib']))
        recon = self.quant_cfg['reconstruction']
        self.reconstruction = None if recon is None else build_checked(
            HOOKS, recon, 'reconstruction')

    def run(self) -> QuantSummary:
        start = time.perf_counter()
        print_log(f'mmptq: calibrating on {len(self.dataloader.dataset)} '
                  f'samples in {len(self.dataloader)} batches',
                  logger='current')
        if self.reconstruction is not None:
            self.runner.register_hook(self.reconstruction)
        try:
            _, summary = quantize_model(
                unwrap(self.runner.model), self.quant_cfg, self.dataloader,
                stage_callback=self.runner.call_hook)
        finally:  # the hook belongs to this calibration only
            if self.reconstruction in self.runner._hooks:
                self.runner._hooks.remove(self.reconstruction)
        self.seconds = time.perf_counter() - start
        print_log(f'mmptq: calibration took {self.seconds:.1f} s',
                  logger='current')
        return summary


@LOOPS.register_module()
class QuantTestLoop(TestLoop):
    """Test loop for quantized evaluation.

    Loads the checkpoint itself (safely; ``unsafe_load`` opts out): an FP
    checkpoint is quantized with ``quant_cfg`` (default: the config's
    ``quant_cfg``) by a ``CalibrationLoop``; a quantized checkpoint (from
    ``tools/quantize.py``) is restored without calibrating. Then evaluates
    with the config's evaluator.

    Args:
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
                 quant_cfg: Optional[dict] = None,
                 fp_baseline: bool = False,
                 save_quantized: Optional[str] = None,
                 evaluate: bool = True,
                 unsafe_load: bool = False) -> None:
        super().__init__(runner, dataloader, evaluator, fp16)
        if quant_cfg is None:
            quant_cfg = runner.cfg.get('quant_cfg')
        self.quant_cfg = quant_cfg.to_dict() if hasattr(
            quant_cfg, 'to_dict') else quant_cfg
        self.fp_baseline = fp_baseline
        self.save_quantized = save_quantized
        self.evaluate = evaluate
        self.unsafe_load = unsafe_load
        install_safe_loader(unsafe_load)
        # the loop loads the checkpoint: a quantized one needs the quantized
        # structure before its state dict can be loaded
        self.checkpoint_path = runner._load_from
        runner._load_from = None

    def _load(self) -> Optional[Dict]:
        if not self.checkpoint_path:
            print_log('mmptq: no checkpoint given, quantizing the weights '
                      'the model was built with', logger='current', level=30)
            return None
        return load_checkpoint_file(self.checkpoint_path,
                                    unsafe=self.unsafe_load)

    def run(self) -> dict:
        timings = {}
        checkpoint = self._load()
        fp_metrics = None
        model = unwrap(self.runner.model)
        if checkpoint is not None and is_quantized_checkpoint(checkpoint):
            meta = checkpoint['meta'][META_KEY]
            if self.quant_cfg:
                print_log('mmptq: the checkpoint is quantized; its own '
                          'quant_cfg is used', logger='current', level=30)
            try:
                summary = restore_quantized(model, meta)
            except ValueError as e:
                raise ValueError(f'{self.checkpoint_path}: {e}') from None
            load_state_checked(model, checkpoint['state_dict'],
                               self.checkpoint_path, quantized=True)
        else:
            if checkpoint is not None:
                load_state_checked(model,
                                   checkpoint.get('state_dict', checkpoint),
                                   self.checkpoint_path)
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
            self._save(summary)
        metrics = {}
        if self.evaluate:
            start = time.perf_counter()
            metrics = super().run()
            timings['quant_eval_s'] = time.perf_counter() - start
        self._report(metrics, fp_metrics, summary, timings)
        return metrics

    def _save(self, summary: QuantSummary) -> None:
        if not is_main_process():
            return
        state = unwrap(self.runner.model).state_dict()
        meta = dict(mmptq_version=mmptq.__version__, **{
            META_KEY: quant_meta(summary)})
        torch.save(dict(meta=meta, state_dict=state), self.save_quantized)
        print_log(f'mmptq: quantized checkpoint saved to '
                  f'{self.save_quantized}', logger='current')

    def _report(self, metrics: dict, fp_metrics: Optional[dict],
                summary: QuantSummary, timings: dict) -> None:
        if not is_main_process():
            return
        if fp_metrics is not None:
            lines = [f'{"metric":40s} {"FP":>10s} {"quantized":>10s}']
            for key in metrics:
                fp = fp_metrics.get(key)
                lines.append(f'{key:40s} {_fmt(fp):>10s} '
                             f'{_fmt(metrics[key]):>10s}')
            print_log('mmptq: FP vs quantized\n' + '\n'.join(lines),
                      logger='current')
        print_log(f'mmptq: quantized ops {summary.counts()}',
                  logger='current')
        result = dict(
            metrics=plain_metrics(metrics),
            fp_metrics=plain_metrics(fp_metrics),
            quant_cfg=summary.quant_cfg,
            summary=list(summary),
            transforms=summary.transforms,
            reconstruction=summary.reconstruction,
            timings=timings,
            checkpoint=self.checkpoint_path,
            mmptq_version=mmptq.__version__)
        path = osp.join(self.runner.work_dir, 'mmptq_results.json')
        with open(path, 'w') as f:
            json.dump(result, f, indent=2, default=str)
        print_log(f'mmptq: results written to {path}', logger='current')


def plain_metrics(metrics: Optional[dict]) -> Optional[dict]:
    """Metrics as JSON numbers: evaluators may return numpy or torch
    scalars (mmseg's IoUMetric does), which ``json`` would write as text."""
    if metrics is None:
        return None
    return {k: v.item() if hasattr(v, 'item') and getattr(v, 'ndim', 1) == 0
            else v for k, v in metrics.items()}


def _fmt(value) -> str:
    if hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
        value = value.item()
    return f'{value:.4f}' if isinstance(value, float) else str(value)
