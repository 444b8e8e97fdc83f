"""``mmptq.apis.export`` on the demo models: the graph of a classifier, a
detector (backbone + neck + dense head) and a segmentor, against the
fake-quant model; the output path checks; an FP checkpoint without a
quant_cfg."""
import os.path as osp

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')
ort = pytest.importorskip('onnxruntime')

from mmptq.apis.benchmark import demo_models  # noqa: E402
from mmptq.apis.export import (example_input, export_checkpoint,  # noqa: E402
                               export_model, quantized_runner,
                               random_init_latency, runtime_benchmark,
                               write_runtime_report)
from mmptq.apis.runner_setup import load_config  # noqa: E402
from mmptq.core import merge_quant_cfg  # noqa: E402
from mmptq.engine import unwrap  # noqa: E402
from mmptq.export import ExportGraph  # noqa: E402


def demo_cfg(name, tmp_path):
    spec, = demo_models([name])
    cfg = load_config(spec.config)
    cfg.work_dir = str(tmp_path / 'work')
    return cfg, spec.checkpoint


def flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)]


@pytest.mark.parametrize('name, outputs', [
    ('deit', ['logits']),
    ('retinanet_r18', ['out0_level0', 'out1_level0']),
    ('segformer', ['seg_logits']),
])
def test_demo_graph_matches_fake_quant(name, outputs, tmp_path):
    cfg, ckpt = demo_cfg(name, tmp_path)
    quant_cfg = merge_quant_cfg(cfg, 'w8a8', calib_samples=4)
    runner = quantized_runner(cfg, ckpt, quant_cfg)
    model = unwrap(runner.model)
    x = example_input(runner, 2)
    path = str(tmp_path / f'{name}.onnx')
    summary = export_model(model, x[:1], path)
    names = [o.name for o in onnx.load(path).graph.output]
    assert set(outputs) <= set(names) and names == summary.outputs
    assert summary.in_python
    with torch.no_grad():
        ref = flat(ExportGraph(model)(x))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts,
                                providers=['CPUExecutionProvider'])
    got = sess.run(None, {'input': x.numpy()})  # batch 2, exported at 1
    assert len(got) == len(ref)
    # ORT's float kernels sum in another order than torch's: a pre-quant
    # value within an ulp of a rounding boundary flips one code, and the
    # flips spread through the layers (tests/test_export checks the codes
    # node by node); so the outputs agree in RMS, not bit for bit
    for a, b in zip(got, ref):
        b = b.numpy()
        rms = np.sqrt(np.mean((a - b)**2) / np.mean(b**2))
        assert a.shape == b.shape and rms < 0.02, rms
    if name == 'deit':
        assert (got[0].argmax(1) == ref[0].numpy().argmax(1)).all()


def test_output_path_checked_before_any_work(tmp_path):
    cfg, ckpt = demo_cfg('deit', tmp_path)
    link = tmp_path / 'link.onnx'
    link.symlink_to(ckpt)
    (tmp_path / 'dir.onnx').mkdir()
    for out, error in ((ckpt, 'is the input checkpoint'),
                       (str(link), 'is the input checkpoint'),
                       (str(tmp_path / 'model.pth'), 'give an .onnx file'),
                       (str(tmp_path / 'dir.onnx'), 'is a folder')):
        with pytest.raises(ValueError, match=error):
            export_checkpoint(cfg, ckpt, out)
    assert not osp.exists(cfg.work_dir)


def test_fp_checkpoint_needs_a_quant_cfg(tmp_path):
    cfg, ckpt = demo_cfg('deit', tmp_path)
    with pytest.raises(ValueError, match='FP checkpoint: pass --quant-cfg'):
        export_checkpoint(cfg, ckpt, str(tmp_path / 'm.onnx'))
    assert not (tmp_path / 'm.onnx').exists()


def test_runtime_benchmark_demo(tmp_path):
    """FP and W8A8 rows of the demo DeiT through ONNX Runtime: the ORT
    metric is the torch metric (FP exactly; int8 within one image)."""
    rows = runtime_benchmark(demo_models(['deit']), ['w8a8'],
                             str(tmp_path), num_images=16, calib_samples=4,
                             repeats=1)
    fp, q = rows
    assert (fp['quant'], q['quant'], q['bits']) == ('FP', 'w8a8', 'W8A8')
    top1 = 'accuracy/top1'
    assert fp['ort_metrics'][top1] == pytest.approx(fp['metrics'][top1])
    assert abs(q['ort_metrics'][top1] - q['metrics'][top1]) <= 100 / 16
    assert q['ort_ops'].get('MatMulIntegerToFloat', 0) > 0
    for row in rows:
        assert set(row['ort_ms']) == {1, 8}
        assert all(v > 0 for v in row['ort_ms'].values())
    assert set(fp['torch_ms']) == {1, 8} and not q['torch_ms']
    md, js = write_runtime_report(rows, str(tmp_path))
    table = open(md).read()
    assert '| deit | w8a8 | top-1' in table and '1.00x/1.00x' in table


def test_random_init_resnet_fuses_into_int8_convs(tmp_path):
    """A random-init ResNet-18 (32² inputs): with its BatchNorms folded,
    ORT fuses the QDQ convolutions into QLinearConv."""
    fp, q = random_init_latency('mmpretrain::resnet/resnet18_8xb32_in1k.py',
                                ['w8a8'], str(tmp_path), size=32,
                                calib_samples=1, repeats=1)
    assert 'QLinearConv' not in fp['ort_ops'] and fp['torch_ms']
    assert q['ort_ops'].get('QLinearConv', 0) >= 8
    assert 'BatchNormalization' not in q['ort_ops']
    assert q['metrics'] == {} and set(q['ort_ms']) == {1, 8}
