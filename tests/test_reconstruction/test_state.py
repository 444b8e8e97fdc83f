"""Resume state of a reconstruction: a damaged unit file is recomputed
with a warning, states of other runs are named as ignored."""
import json
import logging
import os

import pytest
import torch
from mmengine.logging import MMLogger
from torch import nn

from mmptq.reconstruction import ReconstructionState
from helpers import quantized_vit

RECON = dict(type='QDropReconstruction', iters=5, batch_size=8, resume=True)


@pytest.fixture
def log(caplog):
    """What mmptq logs through mmengine's current logger."""
    logger = MMLogger.get_current_instance()
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING]


def saved_state(root):
    state = ReconstructionState(str(root), True)
    torch.manual_seed(0)
    for name in ('a', 'b'):
        state.save(name, nn.Linear(4, 4))
    return state


@pytest.mark.parametrize('damage,why', [
    ('truncate', '{half} bytes, {size} were saved'),
    ('flip', 'its sha256 differs from the one saved'),
    ('remove', 'the file is missing'),
])
def test_a_damaged_unit_file_is_not_resumed(tmp_path, log, damage, why):
    root = tmp_path / 'reconstruction' / 'run'
    saved_state(root)
    path = root / 'a.pth'
    data = path.read_bytes()
    if damage == 'truncate':
        path.write_bytes(data[:len(data) // 2])
    elif damage == 'flip':
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        path.unlink()
    again = ReconstructionState(str(root), True)
    assert again.done == ['a', 'b']
    assert again.load('a', nn.Linear(4, 4)) is False
    assert again.load('b', nn.Linear(4, 4)) is True
    assert again.done == ['b']
    assert warnings_of(log) == [
        f'mmptq: the resume state of reconstruction unit a ({path}) is '
        'corrupt: ' + why.format(half=len(data) // 2, size=len(data))
        + '; the unit is computed again']
    again.save('a', nn.Linear(4, 4))  # recomputed: resumable again
    assert ReconstructionState(str(root), True).load('a', nn.Linear(4, 4))
    progress = json.loads((root / 'progress.json').read_text())
    assert sorted(progress['done']) == ['a', 'b']
    assert progress['files']['a']['size'] == (root / 'a.pth').stat().st_size


def test_a_truncated_unit_is_recomputed_in_a_run(tmp_path, monkeypatch,
                                                  log):
    """A run killed after its units were saved (its state kept), one unit
    file truncated: the same run again recomputes that unit, resumes the
    others, and ends with the parameters of an uninterrupted run."""
    recon = dict(RECON, work_dir=str(tmp_path))
    _, full, _, _ = quantized_vit(dict(recon, resume=False))
    monkeypatch.setattr(ReconstructionState, 'finish', lambda self: None)
    quantized_vit(recon)
    monkeypatch.undo()
    [run] = os.listdir(tmp_path / 'reconstruction')
    root = tmp_path / 'reconstruction' / run
    done = json.loads((root / 'progress.json').read_text())['done']
    unit = root / f'{done[1]}.pth'
    unit.write_bytes(unit.read_bytes()[:100])
    log.clear()
    _, q, summary, _ = quantized_vit(recon)
    assert [r['unit'] for r in summary.reconstruction] == [done[1]]
    messages = [r.getMessage() for r in log.records]
    assert sum('resumed from' in m for m in messages) == len(done) - 1
    assert any(m.startswith(f'mmptq: the resume state of reconstruction '
                            f'unit {done[1]} ({unit}) is corrupt: 100 bytes')
               for m in warnings_of(log)), messages
    a, b = full.state_dict(), q.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_state_of_another_run_is_named_as_ignored(tmp_path, log):
    other = tmp_path / 'reconstruction' / '0123456789abcdef'
    saved_state(other)
    log.clear()
    ReconstructionState(str(tmp_path / 'reconstruction' / 'fedcba9876543210'),
                        True)
    assert warnings_of(log) == [
        f'mmptq: ignored the reconstruction state {other}: it is from '
        'another run (other model, calibration data or settings; this run '
        'is fedcba9876543210). Remove it if that run is not to be resumed']
    assert (other / 'progress.json').is_file()  # kept
