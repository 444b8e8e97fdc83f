"""Rewrites of an exported QDQ graph for ONNX Runtime's CPU kernels. Each
keeps the values of the graph it rewrites (exactly, or up to the order of
float sums), so the ORT file still computes the fake-quant model.

ORT runs a convolution in int8 (QLinearConv) only when it is written
``DQ(x), DQ(W) → Conv → Q``. In a residual block (ResNet's Bottleneck) the
last convolution and the downsample convolution feed the residual add,
which mmptq does not quantize: no QuantizeLinear reads their output, and
ORT runs them in float (NCHWc), about half of ResNet-50's int8 time with
the layout changes around them. The passes here:

- :func:`qdq_before_maxpool`: ``r → MaxPool → Q`` becomes
  ``r → Q → DQ → MaxPool → Q`` (the stem: Conv → ReLU → MaxPool), so the
  convolution before it has its output quantized;
- :func:`integer_pointwise_convs`: a 1×1 convolution with a quantized input
  and weight and a float output becomes ONNX Runtime's
  ``MatMulIntegerToFloat`` over channels-last codes (int32 accumulation);
- :func:`float_weights_for_float_convs`: any other convolution that stays
  float gets its dequantized weight as a float initializer.
"""
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .fold import _attr, _constants, _drop_unused, _sole_consumers

#: the domain of ONNX Runtime's contrib ops (MatMulIntegerToFloat)
ORT_DOMAIN = 'com.microsoft'


def _readers(graph: onnx.GraphProto) -> Dict[str, List[onnx.NodeProto]]:
    readers: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    return readers


def output_quantized(readers: Dict[str, List[onnx.NodeProto]],
                     out: str) -> bool:
    """Whether only QuantizeLinear nodes read ``out`` (directly or through
    one Relu): ORT can then fuse its producer into an int8 kernel."""
    nodes = readers[out]
    if len(nodes) == 1 and nodes[0].op_type == 'Relu':
        nodes = readers[nodes[0].output[0]]
    return bool(nodes) and all(n.op_type == 'QuantizeLinear' for n in nodes)


def _is_dq(node: Optional[onnx.NodeProto]) -> bool:
    return node is not None and node.op_type == 'DequantizeLinear'


def _insert_before(graph: onnx.GraphProto, anchor: onnx.NodeProto,
                   nodes: List[onnx.NodeProto]) -> None:
    index = list(graph.node).index(anchor)
    for k, node in enumerate(nodes):
        graph.node.insert(index + k, node)


def _drop_dead_dq(graph: onnx.GraphProto) -> None:
    """Remove the DequantizeLinear nodes whose output nothing reads."""
    used = {i for n in graph.node for i in n.input} | {
        o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == 'DequantizeLinear'
                 and n.output[0] not in used]:
        graph.node.remove(node)


def qdq_before_maxpool(graph: onnx.GraphProto) -> int:
    """``r → MaxPool → Q(s, z)`` (MaxPool read only by QuantizeLinear nodes
    with one and the same per-tensor s, z) becomes ``r → Q → DQ → MaxPool
    → Q``. Exact: DQ∘Q is non-decreasing, so max commutes with it, and
    Q(DQ(Q(v))) = Q(v) ((q − z)·s / s rounds back to q − z), hence
    Q(MaxPool(DQ(Q(r)))) = Q(MaxPool(r)). ORT then fuses the op before
    (Conv → ReLU → Q: QLinearConv) and runs the MaxPool on uint8 codes.
    Returns the number of MaxPools rewritten."""
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    outputs = {o.name for o in graph.output}
    done = 0
    for pool in [n for n in graph.node if n.op_type == 'MaxPool']:
        qs = readers[pool.output[0]]
        if len(pool.output) > 1 or pool.output[0] in outputs or not qs or \
                _is_dq(producer.get(pool.input[0])) or \
                any(q.op_type != 'QuantizeLinear' or len(q.input) < 3 or
                    not all(i in consts for i in q.input[1:3]) for q in qs):
            continue
        params = [(consts[q.input[1]], consts[q.input[2]]) for q in qs]
        s, z = params[0]
        if s.size != 1 or any(
                not np.array_equal(s2, s) or not np.array_equal(z2, z)
                or z2.dtype != z.dtype for s2, z2 in params):
            continue
        name = pool.name or pool.output[0]
        qparams = [f'{name}/input_scale', f'{name}/input_zero_point']
        graph.initializer.extend(numpy_helper.from_array(v, n)
                                 for v, n in zip((s, z), qparams))
        q = helper.make_node('QuantizeLinear', [pool.input[0], *qparams],
                             [f'{name}/input_q'], name=f'{name}/input/Q')
        dq = helper.make_node('DequantizeLinear',
                              [f'{name}/input_q', *qparams],
                              [f'{name}/input_dq'], name=f'{name}/input/DQ')
        _insert_before(graph, pool, [q, dq])
        pool.input[0] = dq.output[0]
        done += 1
    return done


def _pointwise(conv: onnx.NodeProto, codes: np.ndarray) -> bool:
    """A 1×1 convolution without padding, dilation or groups."""
    return codes.ndim == 4 and codes.shape[2:] == (1, 1) and \
        _attr(conv, 'group', 1) == 1 and \
        not any(_attr(conv, 'pads', [0])) and \
        all(d == 1 for d in _attr(conv, 'dilations', [1])) and \
        _attr(conv, 'auto_pad', b'NOTSET') in (b'NOTSET', b'VALID')


def integer_pointwise_convs(graph: onnx.GraphProto) -> int:
    """Each ``DQ(x), DQ(W) → Conv`` (1×1, per-tensor x, weight per output
    channel or per tensor) whose output no QuantizeLinear reads becomes

        codes of x → [Slice by the stride] → Transpose to NHWC
        → MatMulIntegerToFloat(B = codesᵀ of W) → Transpose to NCHW,

    Y[n, o, h, w] = s_x·s_o·Σ_c (q_x − z_x)(q_W[o, c] − z_o) + b_o: the
    convolution of the dequantized operands, summed in int32 (exact)
    instead of float. ORT's transpose optimizer cancels the transposes
    against those of its NHWC int8 kernels. Returns the number of
    convolutions rewritten."""
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    uses = _sole_consumers(graph)
    done = 0
    for conv in [n for n in graph.node if n.op_type == 'Conv']:
        x_dq, w_dq = (producer.get(i) for i in conv.input[:2])
        if not _is_dq(x_dq) or not _is_dq(w_dq) or \
                output_quantized(readers, conv.output[0]) or \
                uses[w_dq.output[0]] != 1 or len(x_dq.input) < 3 or \
                len(w_dq.input) < 3 or \
                not all(i in consts for i in
                        list(w_dq.input) + list(x_dq.input[1:])) or \
                consts[x_dq.input[1]].size != 1:
            continue
        codes, scale, zp = (consts[i] for i in w_dq.input)
        if not _pointwise(conv, codes) or (
                scale.ndim == 1 and _attr(w_dq, 'axis', 1) != 0):
            continue
        cout = codes.shape[0]
        name = conv.name or conv.output[0]
        inits = {
            'B': np.ascontiguousarray(codes[:, :, 0, 0].T),
            'b_scale': np.broadcast_to(scale, (cout, )).astype(np.float32),
            'b_zero_point': np.broadcast_to(zp, (cout, )).astype(zp.dtype),
        }
        if len(conv.input) > 2 and conv.input[2]:
            inits['bias'] = consts[conv.input[2]].astype(np.float32)
        names = {k: f'{name}/{k}' for k in inits}
        graph.initializer.extend(numpy_helper.from_array(
            np.ascontiguousarray(v), names[k]) for k, v in inits.items())
        nodes = []
        codes_x = x_dq.input[0]
        strides = list(_attr(conv, 'strides', [1, 1]))
        if strides != [1, 1]:
            steps = {'starts': [0, 0], 'ends': [np.iinfo(np.int64).max] * 2,
                     'axes': [2, 3], 'steps': strides}
            graph.initializer.extend(
                numpy_helper.from_array(np.array(v, np.int64),
                                        f'{name}/slice_{k}')
                for k, v in steps.items())
            nodes.append(helper.make_node(
                'Slice', [codes_x] + [f'{name}/slice_{k}' for k in steps],
                [f'{name}/strided'], name=f'{name}/Slice'))
            codes_x = f'{name}/strided'
        nodes.append(helper.make_node('Transpose', [codes_x],
                                      [f'{name}/nhwc'], perm=[0, 2, 3, 1],
                                      name=f'{name}/ToNHWC'))
        nodes.append(helper.make_node(
            'MatMulIntegerToFloat',
            [f'{name}/nhwc', names['B'], x_dq.input[1], names['b_scale'],
             x_dq.input[2], names['b_zero_point'], names.get('bias', '')],
            [f'{name}/nhwc_out'], name=f'{name}/MatMulIntegerToFloat',
            domain=ORT_DOMAIN))
        nodes.append(helper.make_node('Transpose', [f'{name}/nhwc_out'],
                                      [conv.output[0]], perm=[0, 3, 1, 2],
                                      name=f'{name}/ToNCHW'))
        _insert_before(graph, conv, nodes)
        graph.node.remove(conv)
        done += 1
    _drop_dead_dq(graph)
    _drop_unused(graph)
    return done


def float_weights_for_float_convs(graph: onnx.GraphProto) -> int:
    """A ``DQ(W) → Conv`` whose output no QuantizeLinear reads (directly or
    through one Relu) cannot become a QLinearConv and runs in float,
    dequantizing W on every run; store Ŵ = (q − z)·s as a float
    initializer instead (the same float32 values: exact). Returns the
    number of weights replaced."""
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    uses = _sole_consumers(graph)
    replaced = []
    for conv in [n for n in graph.node if n.op_type == 'Conv']:
        dq = producer.get(conv.input[1])
        if not _is_dq(dq) or uses[dq.output[0]] != 1 or \
                output_quantized(readers, conv.output[0]) or \
                not all(i in consts for i in dq.input[:3]):
            continue
        codes, scale, zp = (consts[i] for i in dq.input[:3])
        axis = _attr(dq, 'axis', 1)
        shape = [1] * codes.ndim
        if scale.ndim == 1:
            shape[axis] = -1
        w = (codes.astype(np.float32) - zp.astype(np.float32).reshape(shape)
             ) * scale.reshape(shape)
        name = f'{dq.name or dq.output[0]}/float_weight'
        graph.initializer.append(numpy_helper.from_array(w, name))
        conv.input[1] = name
        replaced.append(dq)
    for dq in replaced:
        graph.node.remove(dq)
    _drop_unused(graph)
    return len(replaced)


def ort_rewrites(model: onnx.ModelProto) -> Dict[str, int]:
    """The three passes in order on ``model`` (in place; the contrib
    domain is declared when used); per pass, the nodes it rewrote."""
    graph = model.graph
    counts = {
        'qdq_before_maxpool': qdq_before_maxpool(graph),
        'integer_pointwise_convs': integer_pointwise_convs(graph),
        'float_weights_for_float_convs': float_weights_for_float_convs(
            graph),
    }
    if counts['integer_pointwise_convs'] and not any(
            o.domain == ORT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
    return counts
