"""engine.checkpoint with bad inputs: a failed save never touches the
target file, files that are not checkpoints and checkpoints of another
model are named as such."""
import hashlib
import os

import pytest
import torch
from torch import nn

from mmptq.engine import checkpoint as ckpt_mod


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


# -------------------------------------- 1. save through a temporary file
def test_save_quantized_checkpoint_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_mod, 'quant_meta', lambda summary: {})
    path = tmp_path / 'q.pth'
    path.write_bytes(b'the previous file')
    before = sha256(path)

    def broken_save(obj, f, *a, **k):
        f.write(b'partial')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='No space left on device'):
        ckpt_mod.save_quantized_checkpoint(nn.Linear(2, 2), None, str(path))
    assert sha256(path) == before
    assert os.listdir(tmp_path) == ['q.pth']  # no temporary file left
    monkeypatch.undo()
    monkeypatch.setattr(ckpt_mod, 'quant_meta', lambda summary: {})
    ckpt_mod.save_quantized_checkpoint(nn.Linear(2, 2), None, str(path))
    assert os.listdir(tmp_path) == ['q.pth']
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)
    assert set(torch.load(path, weights_only=True)['state_dict']) == {
        'weight', 'bias'}


# --------------------------------------- 4. a file that is no checkpoint
HTML = (b'<!DOCTYPE html>\n<html><head><title>Sign in</title></head>'
        b'<body>Please sign in to download</body></html>\n')


@pytest.mark.parametrize('unsafe', [False, True], ids=['safe', 'unsafe'])
def test_an_html_page_is_not_a_checkpoint(tmp_path, unsafe):
    page = tmp_path / 'model.pth'
    page.write_bytes(HTML)
    before = sha256(page)
    with pytest.warns() if unsafe else _no_warning():
        with pytest.raises(ckpt_mod.NotACheckpointError) as e:
            ckpt_mod.load_checkpoint_file(str(page), unsafe=unsafe)
    assert str(e.value) == (
        f'{page} is not a checkpoint: torch reads a zip archive or a pickle, '
        'and it is an HTML page (a login or error page saved instead of the '
        'file?). Download it again')
    assert '--unsafe-load' not in str(e.value)
    assert sha256(page) == before


@pytest.mark.parametrize('content,what', [
    (b'', 'it is empty'),
    (b'<?xml version="1.0"?><Error>AccessDenied</Error>',
     'it is an HTML / XML text (an error page saved instead of the file?)'),
    (b'version https://git-lfs.github.com/spec/v1\n',
     "it starts with b'version https://'"),
    (b'PK\x03\x04' + b'\0' * 40,
     'it is a truncated or damaged zip archive (an interrupted download or '
     'save?)'),
], ids=['empty', 'xml', 'lfs-pointer', 'truncated-zip'])
def test_other_files_that_are_no_checkpoint(tmp_path, content, what):
    path = tmp_path / 'model.pth'
    path.write_bytes(content)
    with pytest.raises(ckpt_mod.NotACheckpointError) as e:
        ckpt_mod.load_checkpoint_file(str(path))
    assert str(e.value) == (f'{path} is not a checkpoint: torch reads a zip '
                            f'archive or a pickle, and {what}. Download it '
                            'again')


def test_an_unsafe_checkpoint_still_asks_for_unsafe_load(tmp_path):
    """A real checkpoint holding a global outside the allow-list keeps the
    advice to pass --unsafe-load (the check above does not catch it)."""
    import collections
    path = tmp_path / 'odd.pth'
    torch.save(dict(state_dict={}, meta=collections.ChainMap()), path)
    with pytest.raises(ckpt_mod.UnsafeCheckpointError,
                       match='pass --unsafe-load'):
        ckpt_mod.load_checkpoint_file(str(path))


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_truncated_checkpoint(tmp_path):
    path = tmp_path / 'cut.pth'
    torch.save(dict(state_dict=nn.Linear(8, 8).state_dict()), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ckpt_mod.NotACheckpointError) as e:
        ckpt_mod.load_checkpoint_file(str(path))
    assert str(e.value) == (
        f'{path} is not a checkpoint: torch reads a zip archive or a pickle, '
        'and it is a truncated or damaged zip archive (an interrupted '
        'download or save?). Download it again')


# ----------------------------- 5. keys and shapes compared before loading
class _Asserting(nn.Module):
    """A state-dict pre-hook that asserts on what it gets, as mmpretrain's
    VisionTransformer does for ``pos_embed``."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 5, 4))
        self.fc = nn.Linear(4, 2)
        self._register_load_state_dict_pre_hook(self._hook)

    def _hook(self, state, prefix, *args):
        assert state[prefix + 'pos'].shape[1] == 5, 'deep inside'


def test_mismatch_is_named_before_a_hook_asserts():
    model = _Asserting()
    state = dict(pos=torch.zeros(1, 7, 4), **model.fc.state_dict(
        prefix='fc.'), extra=torch.zeros(1))
    with pytest.raises(ValueError) as e:
        ckpt_mod.load_state_checked(model, state, 'x.pth')
    assert str(e.value) == (
        "checkpoint x.pth does not match the model of this config: 0 "
        "missing keys [], 1 unexpected key ['extra'], 1 tensor of another "
        "shape ['pos: checkpoint (1, 7, 4), model (1, 5, 4)']. Check that "
        'config and checkpoint belong together (architecture, num_classes, '
        'channels, ...)')


def test_another_architecture_is_refused_before_loading():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {'0.weight': torch.ones(2, 2), 'other.weight': torch.ones(3)}
    with pytest.raises(ValueError) as e:
        ckpt_mod.load_state_checked(model, state, 'y.pth')
    assert str(e.value).startswith(
        "checkpoint y.pth does not match the model of this config: 3 "
        "missing keys ['0.bias', '1.weight', '1.bias'], 1 unexpected key "
        "['other.weight'], 0 tensors of another shape []. ")
    for k, v in model.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k]), k
