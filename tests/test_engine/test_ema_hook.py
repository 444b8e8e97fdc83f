"""Configs with an ``EMAHook`` (mmdet RTMDet / YOLOX, mmpretrain ConvNeXt):
``QuantTestLoop`` evaluates and quantizes exactly the weights the upstream
``tools/test.py`` evaluates, and no hook swaps anything into a quantized
model.

Upstream, ``Runner.load_checkpoint`` calls the hooks' ``after_load_checkpoint``
(``EMAHook`` copies the checkpoint into its EMA model; mmpretrain's swaps a
trained checkpoint's ``ema_state_dict`` back) and the test epoch's
``before_test_epoch`` swaps the EMA weights into the model."""
import json
import os.path as osp
import pickle
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import EMAHook, Hook, IterTimerHook
from torch import nn

from mmptq.engine.loops import detached_hooks, weight_swapping_hooks

pytest.importorskip('mmdet')
pytest.importorskip('mmpretrain')

from e2e_utils import (metrics_json, REPO_ROOT, RTMDET_TINY_CFG, describe,  # noqa: E402
                       make_tiny_coco, ok, results, run_tool, run_upstream,
                       save_init_checkpoint, upstream_tool, write_config)

DEIT_CFG = osp.join(REPO_ROOT, 'configs', 'demo', 'deit-mini_mnist-cls.py')
DEIT_CKPT = osp.join(REPO_ROOT, 'checkpoints', 'demo',
                     'deit-mini_mnist-cls.pth')
W8A8 = osp.join(REPO_ROOT, 'configs', 'quant', 'w8a8.py')
# the first 200 val images, in the main process
DEIT_OPTS = ('--cfg-options', 'test_dataloader.dataset.indices=200',
             'test_dataloader.num_workers=0',
             'test_dataloader.persistent_workers=False')
SWAPPED = "['EMAHook'] swap weights into the model"


def boxes(path):
    """Detection predictions of a ``--out`` pickle: (bboxes, scores,
    labels) per image."""
    with open(path, 'rb') as f:
        preds = pickle.load(f)
    return [tuple(p['pred_instances'][k] for k in ('bboxes', 'scores',
                                                    'labels'))
            for p in preds]


def same_boxes(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y))


# ------------------------------------------------------------- unit tests
class HoldsModuleHook(Hook):
    """Holds a module but does nothing around a test epoch."""

    def __init__(self):
        self.model = nn.Linear(2, 2)


def test_weight_swapping_hooks_and_detached_hooks():
    ema = EMAHook()
    ema.before_run(SimpleNamespace(model=nn.Linear(2, 2)))
    timer, holder, plain = IterTimerHook(), HoldsModuleHook(), Hook()
    hooks = [timer, ema, holder, plain]
    runner = SimpleNamespace(hooks=hooks)
    # EMAHook swaps; the timer has epoch callbacks but holds no module; the
    # holder has no epoch callback
    assert weight_swapping_hooks(runner) == [ema]
    with pytest.raises(KeyError):
        with detached_hooks(runner, [timer, holder]):
            assert runner.hooks == [ema, plain]
            assert hooks is runner.hooks  # the list call_hook walks
            raise KeyError
    assert runner.hooks == [timer, ema, holder, plain]


# ----------------------------------------------------- demo DeiT, trained
@pytest.fixture(scope='module')
def deit(tmp_path_factory):
    """The demo DeiT with an EMAHook (mmpretrain's, the default scope) and
    its checkpoint as an EMA training saves it: ``state_dict`` holds the
    EMA (here: the trained) weights, ``ema_state_dict`` the source model's
    (here: random ones). Upstream evaluates the trained weights."""
    if not osp.isfile(osp.join(REPO_ROOT, 'data', 'mnist_cls',
                               'manifest.json')):
        pytest.fail('data/mnist_cls is missing: `make test` builds it '
                    '(make data)')
    if not upstream_tool('mmpretrain'):
        pytest.skip("mmpretrain's tools/test.py is not installed")
    root = str(tmp_path_factory.mktemp('deit_ema'))
    ema = osp.join(root, 'deit_ema.py')
    with open(ema, 'w') as f:
        f.write(f'_base_ = {DEIT_CFG!r}\n'
                "custom_imports = dict(imports=['mmptq'], "
                'allow_failed_imports=False)\n'
                "custom_hooks = [dict(type='EMAHook', momentum=1e-4, "
                "priority='ABOVE_NORMAL')]\n")
    ema_q = osp.join(root, 'deit_ema_w8a8.py')  # for the upstream tool
    with open(ema_q, 'w') as f:
        f.write(f"_base_ = ['./deit_ema.py', {W8A8!r}]\n"
                "test_cfg = dict(type='mmptq.QuantTestLoop')\n"
                'quant_cfg = dict(calib=dict(num_samples=8))\n')
    state = torch.load(DEIT_CKPT, weights_only=True)['state_dict']
    gen = torch.Generator().manual_seed(0)
    source = {f'module.{k}': torch.randn(v.shape, generator=gen)
              if v.is_floating_point() else v.clone()
              for k, v in state.items()}
    ckpt = osp.join(root, 'ema.pth')
    torch.save(dict(state_dict=state, meta={},
                    ema_state_dict=dict(source, steps=torch.tensor(100))),
               ckpt)
    up_dir = osp.join(root, 'upstream_fp')
    ok(run_upstream('mmpretrain', ema, ckpt, '--work-dir', up_dir,
                    *DEIT_OPTS))
    return SimpleNamespace(root=root, ema=ema, ema_q=ema_q, ckpt=ckpt,
                           fp=metrics_json(up_dir))


def test_ema_config_fp_is_upstream(deit):
    """No quantization: the trained weights, as mmpretrain's own tool."""
    top1 = deit.fp['accuracy/top1']
    assert top1 >= 80, deit.fp  # trained; random weights make ~10
    work_dir = osp.join(deit.root, 'fp')
    ok(run_tool('test', deit.ema, deit.ckpt, '--work-dir', work_dir,
                *DEIT_OPTS))
    assert metrics_json(work_dir) == deit.fp


@pytest.fixture(scope='module')
def deit_w8a8(deit):
    """mmptq's tools/test.py, W8A8 with the FP baseline."""
    work_dir = osp.join(deit.root, 'w8a8')
    proc = ok(run_tool('test', deit.ema, deit.ckpt, '--quant-cfg', 'w8a8',
                       '--calib-samples', 8, '--fp-baseline',
                       '--work-dir', work_dir, *DEIT_OPTS))
    assert SWAPPED in proc.output, describe(proc)
    return results(work_dir)


def test_ema_config_w8a8_is_upstream(deit, deit_w8a8):
    """W8A8 quantizes the weights upstream evaluates: its FP baseline is
    upstream's FP, its result that of the same checkpoint's trained
    weights without any hook, and mmpretrain's own tool with
    QuantTestLoop (load_from) gives the same."""
    res = deit_w8a8
    assert res['fp_metrics'] == deit.fp
    fp, q = deit.fp['accuracy/top1'], res['metrics']['accuracy/top1']
    assert abs(q - fp) <= 1.5, (fp, q)
    # the plain config and the plain demo checkpoint: no hook at all
    plain_dir = osp.join(deit.root, 'w8a8_plain')
    proc = ok(run_tool('test', DEIT_CFG, DEIT_CKPT, '--quant-cfg', 'w8a8',
                       '--calib-samples', 8, '--work-dir', plain_dir,
                       *DEIT_OPTS))
    assert SWAPPED not in proc.output
    assert res['metrics'] == results(plain_dir)['metrics']
    up_dir = osp.join(deit.root, 'upstream_w8a8')
    ok(run_upstream('mmpretrain', deit.ema_q, deit.ckpt, '--work-dir',
                    up_dir, *DEIT_OPTS))
    assert results(up_dir)['metrics'] == res['metrics']


def test_ema_config_quantized_checkpoint(deit, deit_w8a8):
    """tools/quantize.py saves the weights upstream evaluates, quantized;
    tools/test.py restores them and no hook swaps into them: the metrics
    of the run that calibrates with the same settings."""
    q = osp.join(deit.root, 'q.pth')
    ok(run_tool('quantize', deit.ema, deit.ckpt, '--quant-cfg', 'w8a8',
                '--calib-samples', 8, '--out', q,
                '--work-dir', osp.join(deit.root, 'quantize'), *DEIT_OPTS))
    work_dir = osp.join(deit.root, 'restored')
    proc = ok(run_tool('test', deit.ema, q, '--work-dir', work_dir,
                       *DEIT_OPTS))
    assert 'calibrating' not in proc.output
    assert results(work_dir)['metrics'] == deit_w8a8['metrics']


def test_ema_config_benchmark(deit, deit_w8a8):
    """tools/benchmark.py evaluates as tools/test.py: the FP row is
    upstream's FP, the W8A8 row the W8A8 test's result (its model copies
    get no EMA swap)."""
    work_dir = osp.join(deit.root, 'benchmark')
    ok(run_tool('benchmark', '--model', deit.ema, deit.ckpt, '--quant-cfg',
                'w8a8', '--calib-samples', 8, '--num-images', 200,
                '--work-dir', work_dir, '--cfg-options',
                'test_dataloader.num_workers=0',
                'test_dataloader.persistent_workers=False'))
    with open(osp.join(work_dir, 'benchmark.json')) as f:
        fp, w8a8 = json.load(f)['rows']
    assert fp['all_metrics'] == deit.fp
    assert w8a8['all_metrics'] == deit_w8a8['metrics']


# ------------------------------------------------ RTMDet-tiny, random init
@pytest.fixture(scope='module')
def rtmdet(tmp_path_factory):
    if not upstream_tool('mmdet'):
        pytest.skip("mmdet's tools/test.py is not installed")
    root = str(tmp_path_factory.mktemp('rtmdet'))
    make_tiny_coco(root)
    cfg = write_config(osp.join(root, 'rtmdet.py'), RTMDET_TINY_CFG,
                       root=root)
    ckpt = save_init_checkpoint(cfg, osp.join(root, 'fp.pth'))
    return SimpleNamespace(root=root, cfg=cfg, ckpt=ckpt)


def test_rtmdet_fp_is_upstream(rtmdet):
    """mmdet's EMAHook config (mmengine's EMAHook, ExpMomentumEMA): the
    same predictions as mmdet's own tool."""
    up = osp.join(rtmdet.root, 'upstream.pkl')
    ok(run_upstream('mmdet', rtmdet.cfg, rtmdet.ckpt, '--out', up,
                    '--work-dir', osp.join(rtmdet.root, 'upstream')))
    ours = osp.join(rtmdet.root, 'fp.pkl')
    ok(run_tool('test', rtmdet.cfg, rtmdet.ckpt, '--out', ours,
                '--work-dir', osp.join(rtmdet.root, 'fp')))
    assert len(boxes(up)) == 6 and sum(len(b) for b, _, _ in boxes(up))
    same_boxes(boxes(ours), boxes(up))


def test_rtmdet_w8a8(rtmdet):
    """The quantized test loop runs through: the EMA swap of parameters and
    buffers would meet the quantizers' buffers (a crash before)."""
    preds = osp.join(rtmdet.root, 'w8a8.pkl')
    proc = ok(run_tool('test', rtmdet.cfg, rtmdet.ckpt, '--quant-cfg',
                       'w8a8', '--calib-samples', 4, '--out', preds,
                       '--work-dir', osp.join(rtmdet.root, 'w8a8')))
    assert 'mmptq: calibrating on 4 samples' in proc.output
    assert SWAPPED in proc.output, describe(proc)
    assert len(boxes(preds)) == 6
    assert results(osp.join(rtmdet.root, 'w8a8'))['metrics']
