"""Bad inputs to the tools, as a new user would try them: each is refused
with a message that names the problem, before any work, and leaves the
user's files as they were."""
import hashlib
import os
import os.path as osp
from types import SimpleNamespace

import pytest

pytest.importorskip('mmpretrain')

from e2e_utils import (DEIT_CFG, REPO_ROOT, describe,  # noqa: E402
                       make_tiny_cls, run_tool, run_upstream,
                       save_fp_checkpoint, upstream_tool, write_config)

CALIBRATING = 'calibrating'
W8A8 = osp.join(REPO_ROOT, 'configs', 'quant', 'w8a8.py')


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def last_line(proc):
    assert proc.returncode != 0, describe(proc)
    text = proc.stderr.strip() or proc.stdout.strip()
    return text.splitlines()[-1]


@pytest.fixture(scope='module')
def cls(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('bad_inputs'))
    make_tiny_cls(osp.join(root, 'data'))
    cfg = write_config(osp.join(root, 'deit.py'), DEIT_CFG,
                       root=osp.join(root, 'data'))
    fp = save_fp_checkpoint(cfg, osp.join(root, 'fp.pth'))
    return SimpleNamespace(root=root, cfg=cfg, fp=fp)


# ------------------------------------------------ 1. --out is the input
@pytest.mark.parametrize('spelling', ['same', 'relative', 'link'])
def test_quantize_out_is_the_input_checkpoint(cls, spelling):
    out = cls.fp
    if spelling == 'relative':
        out = osp.relpath(cls.fp)  # the tools run from the repository root
    elif spelling == 'link':
        out = osp.join(cls.root, 'fp_link.pth')
        if not osp.exists(out):
            os.symlink(cls.fp, out)
    before = sha256(cls.fp)
    proc = run_tool('quantize', cls.cfg, cls.fp, '--quant-cfg', 'w8a8',
                    '--calib-samples', 2, '--out', out,
                    '--work-dir', osp.join(cls.root, 'work'))
    assert last_line(proc) == (
        f'ValueError: --out {out} is the input checkpoint {cls.fp}: it '
        'would be overwritten; write to another file'), describe(proc)
    assert CALIBRATING not in proc.output
    assert sha256(cls.fp) == before


def test_upstream_tool_save_quantized_is_the_input_checkpoint(cls):
    """mmpretrain's own tools/test.py with ``mmptq.QuantTestLoop`` saving
    over its ``load_from``: refused when the loop is built, before the
    checkpoint is even read."""
    if not upstream_tool('mmpretrain'):
        pytest.skip("mmpretrain's tools/test.py is not installed")
    cfg = osp.join(cls.root, 'save_over_input.py')
    with open(cfg, 'w') as f:
        f.write(f"_base_ = [{cls.cfg!r}, {W8A8!r}]\n"
                "test_cfg = dict(type='mmptq.QuantTestLoop', "
                f"save_quantized={cls.fp!r})\n")
    before = sha256(cls.fp)
    proc = run_upstream('mmpretrain', cfg, cls.fp,
                        '--work-dir', osp.join(cls.root, 'upstream'))
    assert last_line(proc) == (
        f'ValueError: test_cfg.save_quantized {cls.fp} is the input '
        f'checkpoint {cls.fp}: it would be overwritten; write to another '
        'file'), describe(proc)
    assert CALIBRATING not in proc.output
    assert sha256(cls.fp) == before


# --------------------------------- 2. --out into a folder that is missing
def test_quantize_out_into_a_missing_folder(cls):
    out = osp.join(cls.root, 'new', 'deeper', 'q.pth')
    proc = run_tool('quantize', cls.cfg, cls.fp, '--quant-cfg', 'w8a8',
                    '--calib-samples', 2, '--out', out,
                    '--work-dir', osp.join(cls.root, 'work'))
    assert proc.returncode == 0, describe(proc)
    assert osp.isfile(out)
    assert [f for f in os.listdir(osp.dirname(out))] == ['q.pth']


def test_out_folders_are_made_before_any_work(cls, monkeypatch, tmp_path):
    """Both workflows create the --out folder (and --show-dir) before the
    Runner is built; a folder that can not be made fails right away."""
    from mmptq.apis import test as api

    def no_runner(cfg):
        raise RuntimeError('runner built')

    monkeypatch.setattr(api, 'build_runner', no_runner)
    monkeypatch.setattr(api, 'configure_quant_test', lambda *a, **k: None)
    monkeypatch.setattr(api, 'enable_visualization', lambda *a: None)
    q = tmp_path / 'a' / 'q.pth'
    with pytest.raises(RuntimeError, match='runner built'):
        api.quantize_checkpoint(None, cls.fp, dict(), str(q))
    assert q.parent.is_dir()
    preds, show = tmp_path / 'b' / 'preds.pkl', tmp_path / 'c' / 'show'
    with pytest.raises(RuntimeError, match='runner built'):
        api.run_test(None, cls.fp, None, out=str(preds),
                     show_dir=str(show))
    assert preds.parent.is_dir() and show.is_dir()
    (tmp_path / 'file').write_text('')
    with pytest.raises(ValueError) as e:
        api.quantize_checkpoint(None, cls.fp, dict(),
                                str(tmp_path / 'file' / 'q.pth'))
    assert str(e.value) == (f'--out: cannot create the folder '
                            f'{tmp_path / "file"}: File exists')


# ------------------------------------- 4. an HTML page saved as a .pth
def test_test_tool_with_an_html_page_as_checkpoint(cls):
    page = osp.join(cls.root, 'page.pth')
    with open(page, 'wb') as f:
        f.write(b'<!DOCTYPE html>\n<html><body>Sign in</body></html>\n')
    before = sha256(page)
    proc = run_tool('test', cls.cfg, page, '--quant-cfg', 'w8a8',
                    '--calib-samples', 2,
                    '--work-dir', osp.join(cls.root, 'work'))
    assert last_line(proc) == (
        f'mmptq.engine.checkpoint.NotACheckpointError: {page} is not a '
        'checkpoint: torch reads a zip archive or a pickle, and it is an '
        'HTML page (a login or error page saved instead of the file?). '
        'Download it again'), describe(proc)
    assert '--unsafe-load' not in proc.output
    assert sha256(page) == before


# ------------------------- 5. a checkpoint of another architecture (demo)
def test_demo_hivit_checkpoint_with_the_demo_deit_config(cls):
    cfg = 'configs/demo/deit-mini_mnist-cls.py'
    ckpt = 'checkpoints/demo/hivit-mini_mnist-cls.pth'
    if not osp.isdir(osp.join(REPO_ROOT, 'data', 'mnist_cls')):
        pytest.fail('data/mnist_cls is missing: `make test` builds it')
    before = sha256(ckpt)
    proc = run_tool('test', cfg, ckpt, '--quant-cfg', 'w8a8',
                    '--calib-samples', 4,
                    '--work-dir', osp.join(cls.root, 'work'))
    assert last_line(proc) == (
        f'ValueError: checkpoint {ckpt} does not match the model of this '
        "config: 55 missing keys ['backbone.cls_token', "
        "'backbone.patch_embed.projection.weight', "
        "'backbone.patch_embed.projection.bias'], 135 unexpected keys "
        "['backbone.relative_position_index', "
        "'backbone.patch_embed.proj.weight', 'backbone.patch_embed.proj.bias'"
        "], 1 tensor of another shape ['backbone.pos_embed: checkpoint "
        "(1, 49, 64), model (1, 50, 64)']. It fits the demo config "
        'configs/demo/hivit-mini_mnist-cls.py. Check that config and '
        'checkpoint belong together (architecture, num_classes, channels, '
        '...)'), describe(proc)
    assert 'AssertionError' not in proc.output
    assert CALIBRATING not in proc.output
    assert sha256(ckpt) == before


# ------------------------ 8. more calibration samples than the dataset has
def test_more_calibration_samples_than_images(cls):
    proc = run_tool('test', cls.cfg, cls.fp, '--quant-cfg', 'w8a8',
                    '--calib-samples', 100,
                    '--work-dir', osp.join(cls.root, 'work'))
    assert proc.returncode == 0, describe(proc)
    [line] = [line for line in proc.output.splitlines()
              if 'mmptq: quant_cfg.calib.num_samples=100' in line]
    assert ' - WARNING - ' in line, line
    assert line.endswith(
        'mmptq: quant_cfg.calib.num_samples=100, but the train dataset has 8 '
        'samples: calibrating on all 8'), line


# ---------------------------------------------- 9. an option given twice
@pytest.mark.parametrize('option,values', [
    ('--quant-cfg', ('w8a8', 'w4a4')), ('--w-bits', ('8', '4')),
    ('--calib-samples', ('4', '8'))])
def test_a_quant_option_given_twice(option, values, capsys):
    import argparse

    from mmptq.tools.args import add_quant_args
    parser = argparse.ArgumentParser(prog='test.py')
    add_quant_args(parser)
    with pytest.raises(SystemExit) as e:
        parser.parse_args([option, values[0], option, values[1]])
    assert e.value.code == 2
    first, second = values if option == '--quant-cfg' else map(int, values)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'test.py: error: argument {option}: given twice ({first!r}, then '
        f'{second!r}); give it once')
    assert getattr(parser.parse_args([option, values[0]]),
                   option[2:].replace('-', '_')) == first


def test_quant_cfg_twice_in_the_tool(cls):
    proc = run_tool('quantize', cls.cfg, cls.fp, '--quant-cfg', 'w8a8',
                    '--quant-cfg', 'w4a4', '--out',
                    osp.join(cls.root, 'never.pth'))
    assert last_line(proc) == (
        "quantize.py: error: argument --quant-cfg: given twice ('w8a8', "
        "then 'w4a4'); give it once"), describe(proc)
    assert not osp.exists(osp.join(cls.root, 'never.pth'))
