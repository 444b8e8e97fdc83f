"""``mmptq.export.ort_graph``: the rewrites of the ONNX Runtime file keep
the exported graph's values, and the convolutions of a residual block all
run in int8 in ORT."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from mmptq.apis import quantize_model
from mmptq.export import export_qdq
from mmptq.export.ort_graph import (float_weights_for_float_convs,
                                    integer_pointwise_convs,
                                    qdq_before_maxpool, ort_rewrites)

ort = pytest.importorskip('onnxruntime')


class Bottleneck(nn.Module):
    """ResNet's stem (Conv-BN-ReLU-MaxPool) and one Bottleneck with a
    stride-2 downsample: conv3 and the downsample conv feed the residual
    add, which is not quantized."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                                  nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.conv1 = nn.Conv2d(8, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.conv3 = nn.Sequential(nn.Conv2d(4, 16, 1, bias=False),
                                   nn.BatchNorm2d(16))
        self.downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2),
                                        nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        out = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        out = torch.relu(self.conv3(out) + self.downsample(x))
        return self.head(out.mean((2, 3)))


def session(path, optimize=False, optimized_path=None):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def exported(tmp_path, quant_cfg):
    torch.manual_seed(0)
    model = Bottleneck().eval()
    for bn in (model.stem[1], model.conv3[1], model.downsample[1]):
        with torch.no_grad():  # negative γ: folding flips those channels
            bn.weight.uniform_(-1.5, 1.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    data = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    quantize_model(model, quant_cfg, data)
    path = str(tmp_path / 'b.onnx')
    export_qdq(model, (data[0], ), path)
    return model, data, path


def run(path, x, **kwargs):
    return session(path, **kwargs).run(None, {'input': x.numpy()})[0]


@pytest.mark.parametrize('quant_cfg', ['w8a8_deploy', 'w8a8'])
def test_residual_block_runs_int8_with_the_graph_values(tmp_path, quant_cfg):
    """w8a8_deploy (int8 symmetric weights) and w8a8 (uint8 weights with
    zero points): the stem MaxPool gets a QDQ pair, conv3 and the stride-2
    downsample become MatMulIntegerToFloat; as written (no ORT fusion) the
    rewritten graph computes the exported one up to the order of float
    sums (tolerance: float32 rounding of the sums, far below one step of
    the head's input quantizer), and with all of ORT's optimizations no
    convolution is left in float."""
    model, data, path = exported(tmp_path, quant_cfg)
    graph = onnx.load(path)
    counts = ort_rewrites(graph)
    assert counts == {'qdq_before_maxpool': 1, 'integer_pointwise_convs': 2,
                      'float_weights_for_float_convs': 0}
    onnx.checker.check_model(graph)
    ready = str(tmp_path / 'b.ort.onnx')
    onnx.save(graph, ready)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count('MatMulIntegerToFloat') == 2 and ops.count('Slice') == 1
    x = data[1]
    want = run(path, x)
    got = run(ready, x)
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=1e-5 * float(np.abs(want).max()))
    with torch.no_grad():  # the fake-quant model, as the exported graph
        np.testing.assert_allclose(got, model(x).numpy(), rtol=0,
                                   atol=1e-5 * float(np.abs(want).max()))
    optimized = str(tmp_path / 'b.opt.onnx')
    fused = run(ready, x, optimize=True, optimized_path=optimized)
    kinds = [n.op_type for n in onnx.load(optimized).graph.node]
    assert kinds.count('QLinearConv') == 3  # stem, conv1, conv2
    assert kinds.count('MatMulIntegerToFloat') == 2
    assert not {'Conv', 'FusedConv', 'ConvInteger'} & set(kinds)
    err = np.abs(fused - want).max() / np.abs(want).max()
    assert err < 0.05, f'int8 session: relative error {err:.3f}'


def test_qdq_before_maxpool_is_exact(tmp_path):
    """Q(MaxPool(DQ(Q(r)))) = Q(MaxPool(r)): bit-identical outputs."""
    _, data, path = exported(tmp_path, 'w8a8_deploy')
    graph = onnx.load(path)
    assert qdq_before_maxpool(graph.graph) == 1
    pool = next(n for n in graph.graph.node if n.op_type == 'MaxPool')
    assert pool.input[0].endswith('/input_dq')
    moved = str(tmp_path / 'm.onnx')
    onnx.save(graph, moved)
    np.testing.assert_array_equal(run(moved, data[1]), run(path, data[1]))


def test_maxpool_read_by_quantizers_that_differ_is_kept(tmp_path):
    """Two readers with other scales: one QDQ pair before the MaxPool
    would change the other's codes, so the pass leaves it."""
    _, _, path = exported(tmp_path, 'w8a8_deploy')
    graph = onnx.load(path).graph
    pool = next(n for n in graph.node if n.op_type == 'MaxPool')
    q = next(n for n in graph.node if n.op_type == 'QuantizeLinear'
             and n.input[0] == pool.output[0])
    scale = onnx.numpy_helper.from_array(np.array(0.5, np.float32), 'other')
    graph.initializer.append(scale)
    q.input[1] = 'other'
    assert qdq_before_maxpool(graph) == 0


def test_pointwise_conv_with_a_quantized_output_is_left_to_ort(tmp_path):
    """conv1 and conv2 (ReLU, then a QuantizeLinear) fuse into QLinearConv
    in ORT: neither pass touches them. Alone, the float pass takes the
    stem conv (ReLU, then the MaxPool) and the two 1×1 convs of the add;
    the integer pass only the 1×1 ones."""
    _, _, path = exported(tmp_path, 'w8a8_deploy')
    graph = onnx.load(path).graph
    assert float_weights_for_float_convs(graph) == 3
    graph = onnx.load(path).graph
    assert integer_pointwise_convs(graph) == 2
    convs = [n.name for n in graph.node if n.op_type == 'Conv']
    assert len(convs) == 3 and not any('conv3' in n or 'downsample' in n
                                       for n in convs)
