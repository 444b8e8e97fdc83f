"""The calibration batches of ``quant_cfg.calib``, built from the
config's own datasets through its *test* pipeline."""
import copy
import logging

import torch
from mmengine.logging import print_log
from mmengine.registry import DATASETS
from torch.utils.data import DataLoader, Subset

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
    if num > len(dataset):
        print_log(f'mmptq: quant_cfg.calib.num_samples={num}, but the {split} '
                  f'dataset has {len(dataset)} samples: calibrating on all '
                  f'{len(dataset)}', logger='current', level=logging.WARNING)
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
