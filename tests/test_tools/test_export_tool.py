"""``tools/export.py`` end to end: a quantized checkpoint from
``tools/quantize.py`` to an ONNX QDQ graph that ONNX Runtime runs; the
bad inputs fail before any work with the problem on the last line."""
import os.path as osp

import numpy as np
import onnx
import pytest

pytest.importorskip('mmpretrain')
ort = pytest.importorskip('onnxruntime')

from e2e_utils import REPO_ROOT, describe, ok, run_tool  # noqa: E402

CONFIG = osp.join(REPO_ROOT, 'configs/demo/deit-mini_mnist-cls.py')
FP = osp.join(REPO_ROOT, 'checkpoints/demo/deit-mini_mnist-cls.pth')


def last_line(proc):
    assert proc.returncode != 0, describe(proc)
    return proc.stderr.strip().splitlines()[-1]


def test_quantized_checkpoint_to_onnx(tmp_path):
    qckpt = str(tmp_path / 'q.pth')
    ok(run_tool('quantize', CONFIG, FP, '--quant-cfg', 'w8a8',
                '--calib-samples', '4', '--out', qckpt,
                '--work-dir', str(tmp_path / 'wq')))
    out = str(tmp_path / 'deit.onnx')
    proc = ok(run_tool('export', CONFIG, qckpt, '--out', out, '--ort',
                       '--work-dir', str(tmp_path / 'we')))
    assert 'ONNX QDQ export' in proc.output
    assert 'not int8-accelerated (4)' in proc.output  # log√2 softmaxes
    model = onnx.load(out)
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    sess = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    x = np.random.default_rng(0).standard_normal((3, 3, 28, 28))
    logits, = sess.run(None, {'input': x.astype(np.float32)})
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    # --ort: the patch embedding (its output meets the position embedding,
    # no QuantizeLinear) with a float weight, the same logits
    ready = out.replace('.onnx', '.ort.onnx')
    assert f'for ONNX Runtime: {ready}' in proc.output
    sess = ort.InferenceSession(ready, providers=['CPUExecutionProvider'])
    np.testing.assert_allclose(
        sess.run(None, {'input': x.astype(np.float32)})[0], logits,
        rtol=1e-5, atol=1e-5)
    # the checkpoint itself as --out: refused, the checkpoint untouched
    size = osp.getsize(qckpt)
    proc = run_tool('export', CONFIG, qckpt, '--out', qckpt)
    assert 'is the input checkpoint' in last_line(proc)
    assert osp.getsize(qckpt) == size


def test_fp_checkpoint_without_quant_cfg(tmp_path):
    proc = run_tool('export', CONFIG, FP, '--out', str(tmp_path / 'm.onnx'),
                    '--work-dir', str(tmp_path / 'w'))
    assert 'pass --quant-cfg' in last_line(proc)
    assert not (tmp_path / 'm.onnx').exists()
