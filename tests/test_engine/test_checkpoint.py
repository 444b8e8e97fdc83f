"""mmptq.engine.checkpoint: safe loading of real mmengine checkpoints."""
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader
from torch.utils.data import Dataset

from mmptq.engine import (UnsafeCheckpointError, UnsafeLoadWarning,
                          install_safe_loader, load_checkpoint_file)


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        x = torch.stack(inputs) if isinstance(inputs, list) else inputs
        x = self.fc(self.bn(self.conv(x)).mean((2, 3)))
        if mode == 'loss':
            labels = torch.as_tensor(labels)
            return dict(loss=nn.functional.cross_entropy(x, labels))
        return x


class ToyDataset(Dataset):
    metainfo = dict(classes=('zero', 'one'), palette=[(0, 0, 0), (1, 1, 1)])

    def __len__(self):
        return 4

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(idx)
        return dict(inputs=torch.randn(3, 8, 8, generator=g), labels=idx % 2)


class Payload:
    """Not allow-listed: stands for any class a malicious file could name."""

    def __init__(self, value=1):
        self.value = value


@pytest.fixture
def restore_loaders(monkeypatch):
    monkeypatch.setattr(CheckpointLoader, '_schemes',
                        dict(CheckpointLoader._schemes))


@pytest.fixture(scope='module')
def mm_ckpt(tmp_path_factory):
    """A checkpoint written by mmengine's Runner (CheckpointHook path)."""
    work_dir = tmp_path_factory.mktemp('work')
    runner = Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name='ckpt_test',
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=pseudo_collate,
            batch_size=2,
            num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        param_scheduler=dict(
            type='MultiStepLR', milestones=[1], by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        default_scope='mmengine',
        randomness=dict(seed=0))
    runner.train()
    runner.message_hub.update_info('best_score', np.float64(0.25),
                                   resumed=True)
    meta = dict(
        extra=dict(
            mean=np.array([123.675, 116.28, 103.53]),
            scale=np.float64(0.5),
            count=np.int64(3),
            dtype=np.dtype('float32'),
            cfg_dict=ConfigDict(model=dict(type='ToyModel', depth=[1, 2])),
            cfg=Config(dict(a=1, b=dict(c=[1, 2])))))
    runner.save_checkpoint(str(work_dir), 'release.pth', meta=meta)
    path = osp.join(str(work_dir), 'release.pth')
    assert osp.isfile(osp.join(str(work_dir), 'iter_2.pth'))
    state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    return path, state


def test_plain_torch_load_rejects(mm_ckpt):
    path, _ = mm_ckpt
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)  # weights_only=True is torch's default since 2.6


def test_safe_load(mm_ckpt):
    path, state = mm_ckpt
    ckpt = load_checkpoint_file(path)
    assert set(ckpt['state_dict']) == set(state)
    for k, v in state.items():
        torch.testing.assert_close(ckpt['state_dict'][k], v)
    meta = ckpt['meta']
    assert isinstance(meta['cfg'], str)
    assert meta['iter'] == 2 and meta['dataset_meta']['classes'][1] == 'one'
    extra = meta['extra']
    np.testing.assert_allclose(extra['mean'], [123.675, 116.28, 103.53])
    assert isinstance(extra['scale'], np.float64) and extra['scale'] == 0.5
    assert extra['count'] == 3 and extra['dtype'] == np.float32
    assert isinstance(extra['cfg_dict'], ConfigDict)
    assert extra['cfg_dict'].model.depth == [1, 2]
    assert isinstance(extra['cfg'], Config) and extra['cfg'].b.c == [1, 2]
    hub = ckpt['message_hub']
    loss = hub['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer)
    assert np.isfinite(loss.mean()) and len(loss.data[0]) == 2
    assert hub['runtime_info']['best_score'] == 0.25
    assert 'optimizer' in ckpt and 'param_schedulers' in ckpt


def test_iter_checkpoint_from_hook(mm_ckpt):
    path, _ = mm_ckpt
    ckpt = load_checkpoint_file(osp.join(osp.dirname(path), 'iter_2.pth'))
    assert ckpt['meta']['iter'] == 2


def test_mmengine_load_checkpoint(mm_ckpt, restore_loaders):
    path, state = mm_ckpt
    model = ToyModel()
    install_safe_loader()
    ckpt = load_checkpoint(model, path, map_location='cpu')
    assert isinstance(ckpt['message_hub']['log_scalars']['train/lr'],
                      HistoryBuffer)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_install_returns_previous(restore_loaders):
    before = CheckpointLoader._schemes['']
    assert install_safe_loader() is before
    assert CheckpointLoader._get_checkpoint_loader('/a/b.pth') is not before


def test_rejects_unknown_class(tmp_path):
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': Payload()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint_file(path)
    msg = str(info.value)
    assert f'{__name__}.Payload' in msg
    assert '--unsafe-load' in msg and 'unsafe=True' in msg


def test_rejects_via_mmengine(tmp_path, restore_loaders):
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {}, 'meta': Payload()}, path)
    install_safe_loader()
    with pytest.raises(UnsafeCheckpointError, match='Payload'):
        load_checkpoint(nn.Linear(1, 1), path, strict=False)


def test_rejects_getattr_outside_history_buffer(tmp_path):

    class Reduce:

        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')

    path = str(tmp_path / 'getattr.pth')
    torch.save({'x': Reduce()}, path)
    with pytest.raises(UnsafeCheckpointError, match='--unsafe-load'):
        load_checkpoint_file(path)


def test_unsafe_opt_in(tmp_path, restore_loaders):
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': Payload(7)}, path)
    with pytest.warns(UnsafeLoadWarning, match='weights_only=False'):
        ckpt = load_checkpoint_file(path, unsafe=True)
    assert isinstance(ckpt['meta'], Payload) and ckpt['meta'].value == 7
    install_safe_loader(unsafe=True)
    with pytest.warns(UnsafeLoadWarning):
        ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert ckpt['meta'].value == 7


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint_file(str(tmp_path / 'nope.pth'))
