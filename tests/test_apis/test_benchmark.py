"""tools/benchmark.py and tools/train.py end to end on tiny data, and the
pieces of ``mmptq.apis.benchmark`` on hand-made inputs."""
import json
import math
import os.path as osp
import threading
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmpretrain')

from e2e_utils import (DEIT_CFG, MASK_RCNN_CFG, make_tiny_cls,  # noqa: E402
                       make_tiny_coco, ok, run_tool, save_fp_checkpoint,
                       write_config)
from mmptq.apis.benchmark import (PeakMemory, markdown_table,  # noqa: E402
                                  primary_metrics)
from mmptq.engine.checkpoint import (load_checkpoint_file,  # noqa: E402
                                     publish_checkpoint)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('bench'))
    make_tiny_coco(osp.join(root, 'det'))
    det = write_config(osp.join(root, 'mask_rcnn.py'), MASK_RCNN_CFG,
                       root=osp.join(root, 'det'))
    make_tiny_cls(osp.join(root, 'cls'))
    cls = write_config(osp.join(root, 'deit.py'), DEIT_CFG,
                       root=osp.join(root, 'cls'))
    return SimpleNamespace(
        root=root, det=det, cls=cls,
        det_fp=save_fp_checkpoint(det, osp.join(root, 'det.pth')),
        cls_fp=save_fp_checkpoint(cls, osp.join(root, 'cls.pth')))


@pytest.fixture(scope='module')
def bench(tiny):
    work_dir = osp.join(tiny.root, 'work')
    proc = ok(run_tool('benchmark', '--model', tiny.det, tiny.det_fp,
                       '--model', tiny.cls, tiny.cls_fp, '--quant-cfg',
                       'minmax_w8a8', 'w4a4', '--calib-samples', 2,
                       '--num-images', 4, '--work-dir', work_dir))
    with open(osp.join(work_dir, 'benchmark.json')) as f:
        data = json.load(f)
    return SimpleNamespace(proc=proc, work_dir=work_dir, rows=data['rows'],
                           env=data['env'])


def state_mib(checkpoint):
    """MiB of the parameters and buffers saved in an FP checkpoint."""
    state = torch.load(checkpoint, weights_only=True)['state_dict']
    return sum(t.numel() * t.element_size() for t in state.values()) / 2**20


def test_matrix_rows(bench, tiny):
    model_mib = {'mask_rcnn': state_mib(tiny.det_fp),
                 'deit': state_mib(tiny.cls_fp)}
    cells = [(r['model'], r['quant'], r['bits']) for r in bench.rows]
    assert cells == [('mask_rcnn', 'FP', 'FP'),
                     ('mask_rcnn', 'minmax_w8a8', 'W8A8'),
                     ('mask_rcnn', 'w4a4', 'W4A4'),
                     ('deit', 'FP', 'FP'), ('deit', 'minmax_w8a8', 'W8A8'),
                     ('deit', 'w4a4', 'W4A4')]
    for row in bench.rows:
        expected = {'APbox', 'APmask'} if row['model'] == 'mask_rcnn' \
            else {'top-1'}
        assert set(row['metrics']) == expected, row
        assert row['num_images'] == 4
        # timings are not testable: only that they are finite numbers
        assert all(isinstance(row[k], float) and math.isfinite(row[k])
                   for k in ('eval_s', 'eval_ratio')), row
        # a real lower bound: the model evaluated is resident while it
        # runs (RSS on CPU, allocated memory on CUDA), so the peak is at
        # least the size of its parameters and buffers
        assert row['peak_mib'] >= model_mib[row['model']], row
        if row['quant'] == 'FP':
            assert row['calib_s'] is None and row['calib_ratio'] is None
            assert row['eval_ratio'] == 1
            fp = row
        else:
            assert row['calib_ratio'] == pytest.approx(
                row['calib_s'] / row['fp_pass_s'])
            assert row['eval_ratio'] == pytest.approx(
                row['eval_s'] / fp['eval_s'])
            for k, v in row['metrics'].items():
                assert row['delta'][k] == pytest.approx(v - fp['metrics'][k])
            assert row['counts']['linear']['quantized'] > 0


def test_coco_metrics_in_points(bench):
    row = bench.rows[0]
    assert row['metrics']['APbox'] == pytest.approx(
        100 * row['all_metrics']['coco/bbox_mAP'])


def test_report_files(bench):
    with open(osp.join(bench.work_dir, 'benchmark.md')) as f:
        table = f.read()
    assert table.startswith('| model | quant | bits | APbox | APmask | '
                            'top-1 |')
    assert len(table.strip().splitlines()) == 2 + 6
    for model in ('mask_rcnn', 'deit'):
        assert osp.getsize(osp.join(bench.work_dir,
                                    f'benchmark_{model}.png')) > 1000
    assert table.strip() in bench.proc.output  # printed as well
    assert bench.env['torch'] == torch.__version__


def test_progress_over_the_matrix(bench):
    assert '6/6' in bench.proc.output


def test_coco_subset_is_scored_on_its_images(tiny):
    """--num-images N: COCO evaluation sees only those N image ids."""
    from mmptq.apis.benchmark import ModelSpec, _restrict_coco_metrics, \
        benchmark_config
    from mmptq.apis.runner_setup import build_runner
    cfg = benchmark_config(ModelSpec('det', tiny.det, tiny.det_fp),
                       osp.join(tiny.root, 'subset'), 3, None)
    runner = build_runner(cfg)
    _restrict_coco_metrics(runner)
    metric = runner.test_loop.evaluator.metrics[0]
    assert metric.img_ids == [1, 2, 3]


def test_missing_inputs_are_named(tiny):
    proc = run_tool('benchmark', '--model', tiny.cls, 'nope.pth',
                    '--quant-cfg', 'w8a8')
    assert proc.returncode != 0 and 'nope.pth not found' in proc.output
    proc = run_tool('benchmark', '--model', tiny.cls, tiny.cls_fp,
                    '--quant-cfg', 'w9a9')
    assert proc.returncode != 0 and "unknown quantization preset 'w9a9'" \
        in proc.output
    proc = run_tool('benchmark', '--model', tiny.cls, tiny.cls_fp,
                    '--quant-cfg', 'w8a8', '--cfg-options',
                    f'test_dataloader.dataset.data_root={tiny.root}/absent')
    assert proc.returncode != 0 and 'the test data of' in proc.output
    proc = run_tool('benchmark', '--demo', 'yolo', '--quant-cfg', 'w8a8')
    assert proc.returncode != 0 and "unknown demo model(s) ['yolo']" \
        in proc.output


def test_train_and_publish(tiny):
    """tools/train.py trains an upstream config; --publish keeps only the
    weights (float16 on request), which load back into the model."""
    work_dir = osp.join(tiny.root, 'train')
    out = osp.join(tiny.root, 'published.pth')
    ok(run_tool('train', tiny.det, '--work-dir', work_dir, '--cfg-options',
                'train_cfg.max_epochs=1', 'default_hooks.checkpoint.interval=1',
                '--publish', out, '--publish-dtype', 'float16'))
    full = load_checkpoint_file(osp.join(work_dir, 'epoch_1.pth'))
    slim = load_checkpoint_file(out)
    assert set(slim) == {'state_dict', 'meta'} and 'optimizer' in full
    assert slim['meta']['epoch'] == 1
    assert slim['meta']['stored_dtype'] == 'torch.float16'
    assert slim['state_dict'].keys() == full['state_dict'].keys()
    for k, v in full['state_dict'].items():
        got = slim['state_dict'][k]
        if v.is_floating_point():
            assert got.dtype == torch.float16
            torch.testing.assert_close(got.float(), v, rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(got, v)


def test_publish_leaves_out_excluded_prefixes(tmp_path):
    """``exclude``: the keys under those prefixes are not written (the demo
    LAVT's frozen pretrained text encoder), the rest unchanged."""
    src, dst = str(tmp_path / 'full.pth'), str(tmp_path / 'out.pth')
    state = {'text_encoder.w': torch.ones(2), 'text_encoder_head.w':
             torch.zeros(3), 'decoder.w': torch.full((2,), 3.0)}
    torch.save(dict(state_dict=state, meta=dict(epoch=2)), src)
    publish_checkpoint(src, dst, exclude=('text_encoder.', ))
    out = load_checkpoint_file(dst)
    assert sorted(out['state_dict']) == ['decoder.w', 'text_encoder_head.w']
    assert torch.equal(out['state_dict']['decoder.w'], state['decoder.w'])
    assert out['meta'] == dict(epoch=2, excluded=['text_encoder.'])


def test_publish_rejects_non_runner_checkpoints(tmp_path):
    src = str(tmp_path / 'raw.pth')
    torch.save({'weight': torch.ones(2)}, src)
    with pytest.raises(KeyError, match='no "state_dict"'):
        publish_checkpoint(src, str(tmp_path / 'out.pth'))


def test_primary_metrics():
    got = primary_metrics({'coco/bbox_mAP': 0.412, 'coco/bbox_mAP_50': 0.6,
                           'coco/segm_mAP': 0.38})
    assert got == pytest.approx({'APbox': 41.2, 'APmask': 38.0})
    # in points without float noise (the JSON report shows these)
    assert primary_metrics({'coco/bbox_mAP': 0.671}) == {'APbox': 67.1}
    assert primary_metrics({'mIoU': 71.5, 'aAcc': 90.0}) == {'mIoU': 71.5}
    assert primary_metrics({'accuracy/top1': 97.25}) == {'top-1': 97.25}
    # RefSegMetric's cIoU is the referring-segmentation papers' oIoU
    assert primary_metrics({'cIoU': 61.5, 'mIoU': 58.0}) == {
        'oIoU': 61.5, 'mIoU': 58.0}
    # an evaluator mmptq does not know: every scalar
    assert primary_metrics({'f1': 0.5, 'name': 'x'}) == {'f1': 0.5}


def test_markdown_table():
    """The FP row has no calibration cost: blank cells, not 0."""
    rows = [dict(model='m', quant='FP', bits='FP', metrics={'top-1': 90.0},
                 delta={'top-1': 0.0}, calib_s=None, calib_ratio=None,
                 eval_s=2.0, eval_ratio=1.0, peak_mib=100.4),
            dict(model='m', quant='w4a4', bits='W4A4',
                 metrics={'top-1': 80.5}, delta={'top-1': -9.5},
                 calib_s=3.25, calib_ratio=6.5, eval_s=5.0, eval_ratio=2.5,
                 peak_mib=120.6)]
    assert markdown_table(rows).splitlines() == [
        '| model | quant | bits | top-1 | calib s | calib / FP pass | eval s '
        '| eval / FP | peak MiB |',
        '|---|---|---|---|---|---|---|---|---|',
        '| m | FP | FP | 90.00 |  |  | 2.0 | 1.00 | 100 |',
        '| m | w4a4 | W4A4 | 80.50 (-9.50) | 3.2 | 6.5 | 5.0 | 2.50 | 121 |']


def test_peak_memory_keeps_a_peak_between_enter_and_exit(monkeypatch):
    """The sampling thread records a resident-set peak that is gone again
    by ``__exit__``: enter and exit both read 100 MiB, the peak is 400.
    (The process's real RSS is not used: whether a fresh allocation grows
    it depends on the allocator's free pages, which made a 256 MiB
    ``torch.ones`` invisible on CI.)"""
    level = {'mib': 100.0}
    sampled_high = threading.Event()

    def fake_rss() -> float:
        if level['mib'] > 100.0:
            sampled_high.set()
        return level['mib']

    monkeypatch.setattr(PeakMemory, 'rss_mib', staticmethod(fake_rss))
    with PeakMemory(interval=0.001) as mem:
        level['mib'] = 400.0
        assert sampled_high.wait(10), 'the sampling thread never ran'
        level['mib'] = 100.0
    assert mem.peak_mib == 400.0
