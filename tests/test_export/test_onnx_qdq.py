"""ONNX QDQ export (``mmptq.export``) against the fake-quant model: the
codes at every QuantizeLinear node, the outputs, the int8 session, the
float quantizers, the bad inputs."""
import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from helpers import quantized_vit
from mmptq.apis import prepare, quantize_model, resolve_quant_cfg
from mmptq.export import ExportError, export_qdq, plan_export
from mmptq.quantizers import BaseQuantizer
from toy_models import TinyCNN

ort = pytest.importorskip('onnxruntime')


def session(path, optimize=False):
    """An ORT session: the graph as written (Q / DQ run as such), or
    optimized (QDQ groups fused into int8 kernels)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def ort_codes(path, x, names):
    """Output of the QuantizeLinear nodes ``names`` (graph outputs added)
    and the model's first output, from the unoptimized graph."""
    model = onnx.load(path)
    by_name = {n.name: n for n in model.graph.node}
    for name in names:
        out = by_name[name].output[0]
        zp = next(i for i in model.graph.node
                  if i.output[0] == by_name[name].input[2])
        dtype = zp.attribute[0].t.data_type
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(out, dtype, None))
    path = path.replace('.onnx', '_codes.onnx')
    onnx.save(model, path)
    outs = session(path).run(None, {'input': x.numpy()})
    n = len(outs) - len(names)
    return outs[0], dict(zip(names, outs[n:]))


def torch_codes(model, x):
    """clamp(round(x / s) + z, q_min, q_max) at the input of every uniform
    quantizer in its first call, and the model's output."""
    codes, handles = {}, []
    for name, q in model.named_modules():
        if not isinstance(q, BaseQuantizer) or not hasattr(q, 'quant_min'):
            continue

        def hook(mod, args, name=name):
            if name in codes:
                return
            inp = args[0]
            s = mod.broadcast(mod.scale, inp)
            z = mod.broadcast(mod.zero_point, inp)
            codes[name] = torch.clamp(torch.round(inp / s) + z,
                                      mod.quant_min, mod.quant_max)

        handles.append(q.register_forward_pre_hook(hook))
    with torch.no_grad():
        out = model(x)
    for h in handles:
        h.remove()
    return out, codes


def check_against_fake_quant(model, x, path, min_equal=0.999):
    """Export, then: the checker passes; at every activation QDQ the ORT
    codes are mmptq's (all but a fraction 1 − ``min_equal``, within one
    step: float sums in another order); the unoptimized output is the
    fake-quant output; the int8 session's output is close to it."""
    summary = export_qdq(model, (x, ), path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    acts = [r for r in summary.rows if r.role == 'act' and r.mode == 'qdq']
    names = [f'{r.name}/QuantizeLinear' for r in acts]
    out, got = ort_codes(path, x, names)
    ref, want = torch_codes(model, x)
    for row, name in zip(acts, names):
        a, b = got[name].astype(np.int64), want[row.name].numpy()
        assert a.shape == b.shape, name
        diff = np.abs(a - b)
        assert diff.max() <= 1 and (diff == 0).mean() >= min_equal, (
            f'{name}: {(diff > 0).sum()} of {diff.size} codes differ')
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-3,
                               atol=1e-3 * float(ref.abs().max()))
    int8 = session(path, optimize=True).run(None, {'input': x.numpy()})[0]
    err = np.abs(int8 - ref.numpy()).max() / float(ref.abs().max())
    assert err < 0.05, f'int8 session: relative error {err:.3f}'
    return summary


def quantized_cnn(w_bits=8, a_bits=8):
    """TinyCNN quantized; its BatchNorm has negative γ on half of the
    channels and running statistics (folding must flip those channels)."""
    torch.manual_seed(0)
    model = TinyCNN().eval()
    bn = model.features[1]
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-1.5, 1.5, 16))
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    data = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    quantize_model(model, dict(w_bits=w_bits, a_bits=a_bits), data)
    return model, data


def test_conv_net_w8a8(tmp_path):
    model, data = quantized_cnn()
    summary = check_against_fake_quant(model, data[0], str(tmp_path / 'c.onnx'))
    assert {r.mode for r in summary.rows} == {'qdq'}
    # the default weights: asymmetric uint8, which the summary flags
    assert {r.dtype for r in summary.rows if r.role == 'weight'} == {'uint8'}
    assert 'weight.symmetric=True' in summary.table()
    graph = onnx.load(str(tmp_path / 'c.onnx')).graph
    ops = [n.op_type for n in graph.node]
    # DQ → Conv → BN folded into DQ(W') → Conv, as ORT needs to fuse it
    assert summary.folded_bn == 1 and 'BatchNormalization' not in ops
    weights = [r for r in summary.rows if r.role == 'weight']
    # one DQ per weight, with its channel axis (1 for the transposed conv)
    assert ops.count('DequantizeLinear') == len(weights) + ops.count(
        'QuantizeLinear')
    axes = {n.name: onnx.helper.get_attribute_value(n.attribute[0])
            for n in graph.node if n.op_type == 'DequantizeLinear'
            and n.name.endswith('weight_quantizer/DequantizeLinear')}
    assert axes['features.5.weight_quantizer/DequantizeLinear'] == 1
    assert axes['features.0.weight_quantizer/DequantizeLinear'] == 0


def test_vit_w4a4_attention_matmuls(tmp_path):
    """4-bit activations (Clip before Q) and weights, Q·Kᵀ and attn·V
    operands, SDPA and nn.MultiheadAttention; another batch size than the
    export's."""
    _, model, _, data = quantized_vit()
    summary = check_against_fake_quant(model, data[0][:1],
                                       str(tmp_path / 'v.onnx'))
    names = [r.name for r in summary.rows if r.mode == 'qdq']
    for operand in ('sites.0.quantizer_a', 'sites.0.qk.quantizer_b',
                    'sites.2.quantizer_b', 'sites.0.av.quantizer_b'):
        assert any(n.endswith(operand) for n in names), operand
    graph = onnx.load(str(tmp_path / 'v.onnx')).graph
    clips = {n.name for n in graph.node if n.op_type == 'Clip'}
    acts = [r for r in summary.rows if r.role == 'act' and r.mode == 'qdq']
    assert {f'{r.name}/Clip' for r in acts} <= clips  # 4 bits: [0, 15]
    with torch.no_grad():
        ref = model(data[1])
    out = session(str(tmp_path / 'v.onnx')).run(
        None, {'input': data[1].numpy()})[0]
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-3, atol=1e-4)


def test_w4a8_weights_on_the_4bit_grid(tmp_path):
    model, data = quantized_cnn(w_bits=4, a_bits=8)
    check_against_fake_quant(model, data[0], str(tmp_path / 'w4.onnx'))
    graph = onnx.load(str(tmp_path / 'w4.onnx')).graph
    codes = [onnx.numpy_helper.to_array(t) for t in graph.initializer
             if t.name.endswith('onnx_codes')]
    assert codes and all(c.dtype in (np.int8, np.uint8) for c in codes)
    assert all(c.max() - c.min() <= 15 for c in codes)


def test_non_uniform_softmax_stays_float(tmp_path):
    """The generic recipe's log√2 softmax: exact float ops, named in the
    summary as not int8-accelerated, with its nodes."""
    _, model, _, data = quantized_vit()
    path = str(tmp_path / 'v.onnx')
    summary = export_qdq(model, (data[0], ), path)
    slow = summary.not_accelerated()
    assert slow and all(r.quantizer == 'LogSqrt2Quantizer' for r in slow)
    assert all(r.mode == 'float' and r.nodes for r in slow)
    table = summary.table()
    assert 'not int8-accelerated (3)' in table
    assert slow[0].name in table
    graph_nodes = {n.name for n in onnx.load(path).graph.node}
    assert all(set(r.nodes) <= graph_nodes for r in slow)
    assert any(n.endswith('/Log') for n in slow[0].nodes)


def test_not_calibrated_is_an_error(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    prepare(model, resolve_quant_cfg(dict(w_bits=8, a_bits=8)), calls={})
    with pytest.raises(ExportError, match='no scale yet'):
        export_qdq(model, (torch.randn(1, 3, 16, 16), ),
                   str(tmp_path / 'x.onnx'))
    assert not (tmp_path / 'x.onnx').exists()


class Odd(nn.Module):

    def forward(self, x):
        mantissa, _ = torch.frexp(x)
        return mantissa


def test_unsupported_op_names_the_module(tmp_path):
    model, data = quantized_cnn()
    model = nn.Sequential(copy.deepcopy(model.features),
                          nn.Sequential(nn.Identity(), Odd()))
    with pytest.raises(ExportError, match=r"frexp.* in '1\.1'"):
        export_qdq(model, (data[0], ), str(tmp_path / 'x.onnx'))


def test_plan_of_a_disabled_quantizer():
    model, _ = quantized_cnn()
    q = model.features[0].input_quantizer
    q.enabled = False
    rows = {r.name: r for r in plan_export(model)}
    assert rows['features.0.input_quantizer'].mode == 'fp'
    assert rows['features.0.weight_quantizer'].mode == 'qdq'


@pytest.mark.parametrize('dtype, codes, zp', [
    (np.int8, [[-128, 5, 127], [-127, 0, 127]], [0, 0]),
    (np.uint8, [[0, 200, 255], [3, 4, 5]], [128, 7]),
])
def test_batchnorm_fold_negates_channels_in_range(dtype, codes, zp):
    """a_c < 0: (q' − z') = −(q − z) with q', z' in the type's range."""
    from mmptq.export.fold import _flip
    codes, zp = np.array(codes, dtype), np.array(zp, dtype)
    neg = np.array([True, True])
    new_codes, new_zp = _flip(codes, zp, neg, dtype)
    assert new_codes.dtype == dtype and new_zp.dtype == dtype
    want = -(codes.astype(np.int64) - zp.astype(np.int64)[:, None])
    got = new_codes.astype(np.int64) - new_zp.astype(np.int64)[:, None]
    np.testing.assert_array_equal(got, want)


def test_ort_ready_float_weights_for_unfusable_convs(tmp_path):
    """A Conv whose output no QuantizeLinear reads (features.7: ReLU, then
    the mean) gets Ŵ as a float initializer; the others keep DQ(codes);
    the outputs are bit-identical."""
    from mmptq.export.runtime import ort_ready
    model, data = quantized_cnn()
    path = str(tmp_path / 'c.onnx')
    export_qdq(model, (data[0], ), path)
    ready = ort_ready(path)
    assert ready.endswith('.ort.onnx')
    names = {n.name for n in onnx.load(ready).graph.node}
    assert 'features.7.weight_quantizer/DequantizeLinear' not in names
    assert 'features.0.weight_quantizer/DequantizeLinear' in names
    feed = {'input': data[0].numpy()}
    np.testing.assert_array_equal(session(ready).run(None, feed)[0],
                                  session(path).run(None, feed)[0])


def test_log_int_softmax_is_named_where_it_fails(tmp_path):
    """FQ-ViT's Log-Int-Softmax calls torch.frexp, which the exporter does
    not map: the error names the op and the quantizer's module path."""
    _, model, _, data = quantized_vit(
        attn=dict(softmax=dict(type='LISQuantizer')))
    with pytest.raises(ExportError, match=r"frexp in 'blocks\.0\.attn\."
                       r"attn_quantizer\.sites\.1\.quantizer'"):
        export_qdq(model, (data[0], ), str(tmp_path / 'x.onnx'))
