"""End to end: the user-facing tools (``tools/test.py``,
``tools/quantize.py``) run as subprocesses on tiny data written here, with
tiny models built from the real mmdet / mmseg / mmpretrain configs."""
import glob
import math
import os.path as osp
import pickle
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

from e2e_utils import (metrics_json, DEIT_CFG, MASK_RCNN_CFG, REPO_ROOT,  # noqa: E402
                       SEGFORMER_CFG, describe, fp_predictions, ok,
                       make_tiny_cls, make_tiny_coco, make_tiny_seg,
                       quantized_kinds, results, run_tool,
                       save_fp_checkpoint, seg_metrics, top1, write_config)

CALIBRATING = 'calibrating'
TABLE_ROW = r'{key}\s+-?\d+\.\d+\s+-?\d+\.\d+'


def failed(proc, *phrases):
    """The tool failed and the last line it printed names the problem."""
    assert proc.returncode != 0, describe(proc)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() \
        else proc.stdout.strip().splitlines()[-1]
    for phrase in phrases:
        assert phrase in last, f'{phrase!r} not in the error {last!r}\n' \
            + describe(proc)
    return last


def same(a, b, where='preds'):
    """Exact equality of nested predictions (tensors, arrays, dicts...)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f'{where} differs'
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


def load_preds(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def det(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('det'))
    make_tiny_coco(root)
    cfg = write_config(osp.join(root, 'mask_rcnn.py'), MASK_RCNN_CFG,
                       root=root)
    fp = save_fp_checkpoint(cfg, osp.join(root, 'fp.pth'))
    return SimpleNamespace(root=root, cfg=cfg, fp=fp)


@pytest.fixture(scope='module')
def det_fp_baseline(det):
    """W8A8 with the FP baseline in the same run."""
    work_dir = osp.join(det.root, 'w8a8_fp_baseline')
    proc = ok(run_tool('test', det.cfg, det.fp, '--quant-cfg', 'w8a8',
                       '--calib-samples', 4, '--fp-baseline',
                       '--work-dir', work_dir))
    return SimpleNamespace(proc=proc, results=results(work_dir))


@pytest.fixture(scope='module')
def det_quantized(det):
    """tools/quantize.py → a quantized checkpoint."""
    q = osp.join(det.root, 'q.pth')
    proc = ok(run_tool('quantize', det.cfg, det.fp, '--quant-cfg', 'w8a8',
                       '--calib-samples', 4, '--out', q,
                       '--work-dir', osp.join(det.root, 'quantize')))
    assert osp.isfile(q), describe(proc)
    return q


@pytest.fixture(scope='module')
def det_restored(det, det_quantized):
    """tools/test.py on the quantized checkpoint: no calibration."""
    preds = osp.join(det.root, 'preds.pkl')
    work_dir = osp.join(det.root, 'restored')
    proc = ok(run_tool('test', det.cfg, det_quantized, '--out', preds,
                       '--work-dir', work_dir))
    return SimpleNamespace(proc=proc, preds=preds, results=results(work_dir))


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('seg'))
    make_tiny_seg(osp.join(root, 'data'))
    cfg = write_config(osp.join(root, 'segformer.py'), SEGFORMER_CFG,
                       root=osp.join(root, 'data'))
    fp = save_fp_checkpoint(cfg, osp.join(root, 'fp.pth'))
    return SimpleNamespace(root=root, cfg=cfg, fp=fp)


@pytest.fixture(scope='module')
def cls(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('cls'))
    make_tiny_cls(osp.join(root, 'data'))
    cfg = write_config(osp.join(root, 'deit.py'), DEIT_CFG,
                       root=osp.join(root, 'data'))
    fp = save_fp_checkpoint(cfg, osp.join(root, 'fp.pth'))
    return SimpleNamespace(root=root, cfg=cfg, fp=fp)


@pytest.fixture(scope='module')
def cls_skip_head(cls):
    """A DeiT quantized checkpoint whose quant_cfg keeps the head FP."""
    skip = osp.join(cls.root, 'skip_head.py')
    with open(skip, 'w') as f:
        f.write('quant_cfg = dict(\n'
                "    weight=dict(observer=dict(_delete_=True, "
                "type='MinMaxObserver')),\n"
                "    overrides=[dict(name=r'head\\..*', skip=True)],\n"
                '    calib=dict(num_samples=2))\n')
    q = osp.join(cls.root, 'q_skip_head.pth')
    ok(run_tool('quantize', cls.cfg, cls.fp, '--quant-cfg', skip, '--out', q,
                '--work-dir', osp.join(cls.root, 'quantize')))
    return q


# ------------------------------------------------------------------ mmdet
def test_det_w8a8_fp_baseline(det_fp_baseline, det_restored):
    res, out = det_fp_baseline.results, det_fp_baseline.proc.output
    for which in ('fp_metrics', 'metrics'):
        for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP',
                    'coco/segm_mAP_50'):
            assert isinstance(res[which][key], float), (which, key)
    # the quantized metrics of the run are those of the model it makes:
    # quantize.py with the same settings, its checkpoint evaluated alone
    # (the FP evaluation first changes nothing); the FP metrics are those
    # of the FP-only run (test_det_without_quant_cfg_is_upstream)
    assert res['metrics'] == det_restored.results['metrics']
    # COCO evaluation ran on both tasks twice (FP and quantized): mmdet's
    # summary lines; pycocotools' own printout is captured (DEBUG records)
    assert out.count('bbox_mAP_copypaste') == 2
    assert out.count('segm_mAP_copypaste') == 2
    assert 'Evaluate annotation type' not in out
    # the side-by-side table
    assert 'mmptq: FP vs quantized' in out
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert re.search(TABLE_ROW.format(key=re.escape(key)), out), key
    kinds = quantized_kinds(res['summary'])
    assert kinds.get('conv2d', 0) >= 20, kinds  # backbone, FPN, heads
    assert kinds.get('linear', 0) >= 4, kinds  # shared fcs, cls, reg
    assert not [r for r in res['summary'] if r['status'] == 'fp'], \
        'W8A8 leaves no layer of Mask R-CNN in FP'
    assert res['quant_cfg']['w_bits'] == res['quant_cfg']['a_bits'] == 8
    assert res['quant_cfg']['calib']['num_samples'] == 4
    # timings are not testable; that each phase was timed is
    assert sorted(res['timings']) == ['calibration_s', 'fp_eval_s',
                                      'quant_eval_s']
    assert all(isinstance(t, float) and math.isfinite(t)
               for t in res['timings'].values()), res['timings']
    assert 'mmptq: calibrating on 4 samples' in out


def test_det_without_quant_cfg_is_upstream(det, det_fp_baseline):
    """No --quant-cfg, no quant_cfg: FP evaluation as mmdet's own tool,
    same metrics as the FP baseline; --show-dir draws the predictions."""
    work_dir = osp.join(det.root, 'fp_only')
    show_dir = osp.join(det.root, 'show')
    proc = ok(run_tool('test', det.cfg, det.fp, '--work-dir', work_dir,
                       '--show-dir', show_dir))
    assert CALIBRATING not in proc.output
    assert not osp.exists(osp.join(work_dir, 'mmptq_results.json'))
    fp = metrics_json(work_dir)
    assert fp == det_fp_baseline.results['fp_metrics']
    drawn = sorted(glob.glob(osp.join(show_dir, '*.png')))
    assert len(drawn) == 6, drawn
    # the upstream tool on the same config and checkpoint agrees
    upstream = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim',
                        'tools', 'test.py')
    if osp.isfile(upstream):
        up_dir = osp.join(det.root, 'upstream')
        up = subprocess.run(
            [sys.executable, upstream, det.cfg, det.fp, '--work-dir', up_dir],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]
        assert metrics_json(up_dir) == fp


def test_det_config_with_quant_cfg_under_mmdets_own_tool(
        det, det_fp_baseline, det_quantized, det_restored):
    """A config that carries quant_cfg and QuantTestLoop (as the README
    shows) quantizes under mmdet's own tools/test.py, which sets load_from:
    the same metrics as mmptq's tool with the same settings; a quantized
    checkpoint is restored, not calibrated, to the same metrics as
    mmptq's tool on it."""
    upstream = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim',
                        'tools', 'test.py')
    if not osp.isfile(upstream):
        pytest.skip("mmdet's tools/test.py is not installed")
    preset = osp.join(REPO_ROOT, 'configs', 'quant', 'w8a8.py')
    cfg = osp.join(det.root, 'mask_rcnn_w8a8.py')
    with open(cfg, 'w') as f:
        f.write(f"_base_ = ['./mask_rcnn.py', {preset!r}]\n"
                "custom_imports = dict(imports=['mmptq'], "
                "allow_failed_imports=False)\n"
                "test_cfg = dict(type='mmptq.QuantTestLoop')\n"
                "quant_cfg = dict(calib=dict(num_samples=4))\n")
    for ckpt, want, name in (
            (det.fp, det_fp_baseline.results['metrics'], 'up_fp'),
            (det_quantized, det_restored.results['metrics'], 'up_q')):
        work_dir = osp.join(det.root, name)
        proc = subprocess.run(
            [sys.executable, upstream, cfg, ckpt, '--work-dir', work_dir],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (CALIBRATING in proc.stdout + proc.stderr) == (ckpt == det.fp)
        assert results(work_dir)['metrics'] == want


def test_det_quantized_checkpoint_round_trip(det, det_restored):
    """quantize.py then test.py on its checkpoint (no calibration) predicts
    bit-identically to test.py calibrating with the same settings."""
    preds = det_restored.preds
    assert CALIBRATING not in det_restored.proc.output
    preds_calib = osp.join(det.root, 'preds_calib.pkl')
    calibrated = ok(run_tool('test', det.cfg, det.fp, '--quant-cfg', 'w8a8',
                             '--calib-samples', 4, '--out', preds_calib,
                             '--work-dir', osp.join(det.root, 'calib')))
    assert 'mmptq: calibrating on 4 samples' in calibrated.output

    a, b = load_preds(preds), load_preds(preds_calib)
    assert len(a) == 6
    for sample in a:
        inst = sample['pred_instances']
        assert {'bboxes', 'scores', 'labels', 'masks'} <= set(inst)
        assert len(inst['scores']) > 0
    for i, (x, y) in enumerate(zip(a, b)):
        assert x['img_path'] == y['img_path']
        same(x['pred_instances'], y['pred_instances'], f'preds[{i}]')

    ra = det_restored.results
    rb = results(osp.join(det.root, 'calib'))
    assert ra['metrics'] == rb['metrics']
    assert 'calibration_s' not in ra['timings']
    assert [(r['name'], r['status'], r['w_bits'], r['a_bits'])
            for r in ra['summary']] == \
        [(r['name'], r['status'], r['w_bits'], r['a_bits'])
         for r in rb['summary']]


# ------------------------------------------------------------------ mmseg
def test_seg_segformer_w8a8(seg):
    work_dir = osp.join(seg.root, 'w8a8')
    preds = osp.join(seg.root, 'w8a8_preds.pkl')
    proc = ok(run_tool('test', seg.cfg, seg.fp, '--quant-cfg', 'w8a8',
                       '--calib-samples', 2, '--fp-baseline', '--out', preds,
                       '--work-dir', work_dir))
    res = results(work_dir)
    # --out holds the last evaluation's predictions: the quantized model's
    quant = load_preds(preds)
    fp = fp_predictions(seg.cfg, seg.fp)  # FP, in this process
    assert len(quant) == len(fp) == 4
    # each metric is the one of its model's predictions (IoUMetric's
    # definitions recomputed here): FP from the FP model run here, the
    # quantized one from what the quantized model predicted
    for which, samples in (('fp_metrics', fp), ('metrics', quant)):
        want = seg_metrics(samples, num_classes=3)
        assert res[which] == pytest.approx(want, abs=1e-4), (which, want)
    # and that model is not the FP one: W8A8 changed the logits
    for q, f in zip(quant, fp):
        assert q['img_path'] == f['img_path']
        assert not torch.equal(q['seg_logits']['data'],
                               f['seg_logits']['data'])
    kinds = quantized_kinds(res['summary'])
    for kind in ('qk', 'softmax', 'av'):  # one of each per attention block
        assert kinds.get(kind) == 4, kinds
    assert kinds.get('linear', 0) > 0 and kinds.get('conv2d', 0) > 0, kinds
    assert not [r for r in res['summary'] if r['status'] == 'fp'], \
        [r for r in res['summary'] if r['status'] == 'fp']
    assert 'mmptq: calibrating on 2 samples' in proc.output
    assert re.search(TABLE_ROW.format(key='mIoU'), proc.output)


# ------------------------------------------------------------- mmpretrain
def test_cls_deit_w8a8(cls):
    work_dir = osp.join(cls.root, 'w8a8')
    preds = osp.join(cls.root, 'w8a8_preds.pkl')
    ok(run_tool('test', cls.cfg, cls.fp, '--quant-cfg', 'w8a8',
                '--calib-samples', 4, '--out', preds, '--work-dir', work_dir))
    res = results(work_dir)
    quant = load_preds(preds)
    assert len(quant) == 8
    # the reported top-1 is the one of the dumped (quantized) predictions
    assert res['metrics']['accuracy/top1'] == pytest.approx(top1(quant))
    # which are not the FP model's: W8A8 changed the scores
    fp = fp_predictions(cls.cfg, cls.fp)
    for q, f in zip(quant, fp):
        assert q['img_path'] == f['img_path']
        assert not torch.equal(q['pred_score'], f['pred_score'])
    assert res['fp_metrics'] is None  # no --fp-baseline
    kinds = quantized_kinds(res['summary'])
    # 2 blocks: attention (fused SDPA or Q·Kᵀ / softmax / attn·V) quantized
    assert kinds.get('sdpa', 0) + kinds.get('softmax', 0) == 2, kinds
    assert kinds.get('linear', 0) >= 9, kinds  # qkv, proj, 2 fc per block + head
    assert kinds.get('conv2d') == 1, kinds  # patch embedding


def test_config_with_own_quant_cfg(cls):
    """A config carrying ``quant_cfg`` quantizes without --quant-cfg."""
    cfg = osp.join(cls.root, 'deit_quant.py')
    with open(cfg, 'w') as f:
        f.write("_base_ = './deit.py'\n"
                'quant_cfg = dict(\n'
                '    w_bits=6, a_bits=8,\n'
                "    weight=dict(observer=dict(_delete_=True, "
                "type='MinMaxObserver')),\n"
                "    overrides=[dict(name=r'head\\..*', skip=True)],\n"
                '    calib=dict(num_samples=2, batch_size=2))\n')
    work_dir = osp.join(cls.root, 'own_quant_cfg')
    proc = ok(run_tool('test', cfg, cls.fp, '--work-dir', work_dir))
    assert 'mmptq: calibrating on 2 samples in 1 batches' in proc.output
    res = results(work_dir)
    assert 'accuracy/top1' in res['metrics']
    assert res['quant_cfg']['w_bits'] == 6
    rows = {r['name']: r for r in res['summary']}
    assert rows['head.layers.head']['reason'] == 'skipped by override'
    linear = [r for r in res['summary']
              if r['kind'] == 'linear' and r['status'] == 'quantized']
    assert linear and all(r['w_bits'] == 6 and r['a_bits'] == 8
                          for r in linear)


def test_quantized_checkpoint_keeps_its_quant_cfg(cls, cls_skip_head):
    """A quantized checkpoint is restored with the quant_cfg it was made
    with; the same setting given beside it is accepted, another one is an
    error before anything is loaded into the model."""
    work_dir = osp.join(cls.root, 'restored')
    ok(run_tool('test', cls.cfg, cls_skip_head, '--quant-cfg',
                osp.join(cls.root, 'skip_head.py'), '--calib-samples', 8,
                '--work-dir', work_dir))
    res = results(work_dir)
    assert res['quant_cfg']['w_bits'] == 8
    rows = {r['name']: r for r in res['summary']}
    assert rows['head.layers.head']['reason'] == 'skipped by override'
    assert rows['backbone.layers.0.attn.qkv']['status'] == 'quantized'
    assert 'accuracy/top1' in res['metrics']
    proc = run_tool('test', cls.cfg, cls_skip_head, '--quant-cfg', 'w4a4',
                    '--work-dir', osp.join(cls.root, 'restored_w4a4'))
    failed(proc, f'ValueError: {cls_skip_head} is a quantized checkpoint '
           "whose quant_cfg differs from the one given (--quant-cfg or the "
           "config's quant_cfg) in ['a_bits', 'overrides', 'w_bits', "
           "'weight']: evaluate it without --quant-cfg, or quantize the FP "
           'checkpoint with the new setting')
    assert CALIBRATING not in proc.output


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize('args, phrases', [
    (['--quant-cfg', 'w3a3'],
     ['unknown quantization preset', "'w3a3'", 'w8a8', 'w4a4']),
    (['--quant-cfg', 'w8a8', '--w-bits', '0'],
     ['bits=0', 'w_bits', 'out of range']),
    (['--quant-cfg', 'w8a8', '--a-bits', '33'],
     ['bits=33', 'a_bits', 'out of range']),
    (['--quant-cfg', 'w8a8', '--calib-samples', '0'],
     ['num_samples=0']),
], ids=['unknown-preset', 'w-bits-0', 'a-bits-33', 'calib-samples-0'])
def test_bad_cli_values(cls, args, phrases):
    proc = run_tool('test', cls.cfg, cls.fp, *args,
                    '--work-dir', osp.join(cls.root, 'bad'))
    failed(proc, *phrases)


def test_unknown_registry_type(cls):
    bad = osp.join(cls.root, 'bad_observer.py')
    with open(bad, 'w') as f:
        f.write("quant_cfg = dict(act=dict(observer=dict(type='MinMaxObs')))\n")
    proc = run_tool('test', cls.cfg, cls.fp, '--quant-cfg', bad,
                    '--work-dir', osp.join(cls.root, 'bad'))
    failed(proc, "'MinMaxObs'", 'MinMaxObserver')


def test_quantize_needs_a_quant_cfg(cls):
    proc = run_tool('quantize', cls.cfg, cls.fp, '--out',
                    osp.join(cls.root, 'never.pth'))
    failed(proc, 'nothing to quantize with')
    assert not osp.exists(osp.join(cls.root, 'never.pth'))


def test_checkpoint_of_another_model(cls, det):
    proc = run_tool('test', cls.cfg, det.fp, '--quant-cfg', 'w8a8',
                    '--calib-samples', 2,
                    '--work-dir', osp.join(cls.root, 'bad'))
    failed(proc, 'does not match', det.fp, 'missing keys')
    assert CALIBRATING not in proc.output


def test_checkpoint_with_other_num_classes(cls):
    proc = run_tool('test', cls.cfg, cls.fp, '--quant-cfg', 'w8a8',
                    '--calib-samples', 2, '--work-dir',
                    osp.join(cls.root, 'bad'), '--cfg-options',
                    'model.head.num_classes=3',
                    'model.data_preprocessor.num_classes=3')
    failed(proc, 'does not match', 'head.layers.head', 'shape')
    assert CALIBRATING not in proc.output


def test_quantized_checkpoint_of_another_architecture(cls, cls_skip_head):
    """Made from a 2-block DeiT, tested with a 1-block one: the attention
    it quantized is not there."""
    proc = run_tool('test', cls.cfg, cls_skip_head, '--work-dir',
                    osp.join(cls.root, 'bad'), '--cfg-options',
                    'model.backbone.arch.num_layers=1')
    failed(proc, 'does not match', 'backbone.layers.1')


def test_quantized_checkpoint_with_other_structure(cls, cls_skip_head):
    """The checkpoint's recorded quant_cfg (as if made with other
    overrides) keeps the blocks FP and quantizes the head, its weights hold
    quantizer parameters for the blocks and none for the head: they do not
    fit the structure."""
    ckpt = torch.load(cls_skip_head, weights_only=False)
    ckpt['meta']['mmptq']['quant_cfg']['overrides'] = [
        dict(name=r'backbone\.layers\..*', skip=True)]
    bad = osp.join(cls.root, 'q_other_structure.pth')
    torch.save(ckpt, bad)
    proc = run_tool('test', cls.cfg, bad,
                    '--work-dir', osp.join(cls.root, 'bad'))
    failed(proc, 'quantized checkpoint', 'does not match',
           'unexpected keys', 'made from this config')


LOADS_AT_BUILD = '''
from mmengine.runner.checkpoint import _load_checkpoint
from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS


@MODELS.register_module()
class LoadsAtBuild(ImageClassifier):
    """Loads its weights when built (as BoxPromptSAM loads SAM's)."""

    def __init__(self, weights, **kwargs):
        super().__init__(**kwargs)
        self.load_state_dict(_load_checkpoint(weights)['state_dict'])
'''


def test_cls_model_that_loads_weights_when_built(cls, monkeypatch):
    """No CHECKPOINT argument: the model's own build loads a Runner-style
    checkpoint (numpy in ``meta``), through mmptq's safe loader, which the
    tools install before the Runner builds the model; the W8A8 result is
    that of the same weights passed as CHECKPOINT."""
    state = torch.load(cls.fp, weights_only=True)['state_dict']
    weights = osp.join(cls.root, 'with_numpy_meta.pth')
    torch.save(dict(state_dict=state, meta=dict(seed=np.int64(0))), weights)
    with open(osp.join(cls.root, 'loads_at_build.py'), 'w') as f:
        f.write(LOADS_AT_BUILD)
    cfg = osp.join(cls.root, 'loads_at_build_cfg.py')
    with open(cfg, 'w') as f:
        f.write(f'_base_ = {cls.cfg!r}\n'
                "custom_imports = dict(imports=['loads_at_build'], "
                'allow_failed_imports=False)\n'
                f"model = dict(type='LoadsAtBuild', weights={weights!r})\n")
    monkeypatch.setenv('PYTHONPATH', cls.root)
    args = ('--quant-cfg', 'w8a8', '--calib-samples', 2)
    proc = ok(run_tool('test', cfg, *args,
                       '--work-dir', osp.join(cls.root, 'at_build')))
    assert 'no checkpoint given' in proc.output
    ok(run_tool('test', cls.cfg, cls.fp, *args,
                '--work-dir', osp.join(cls.root, 'given')))
    assert results(osp.join(cls.root, 'at_build'))['metrics'] == \
        results(osp.join(cls.root, 'given'))['metrics']


@pytest.mark.parametrize('tool', ['test', 'quantize'])
def test_help_lists_the_presets(tool):
    from mmptq.apis import list_presets
    proc = ok(run_tool(tool, '--help'))
    text = ''.join(proc.stdout.split())  # argparse wraps inside names
    missing = [p for p in list_presets() if p not in text]
    assert not missing, proc.stdout
