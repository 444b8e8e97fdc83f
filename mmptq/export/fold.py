"""Graph passes on an exported QDQ model: BatchNorm folded into the
dequantized weight of the convolution before it, as a deployment folds it
(ONNX Runtime fuses a QDQ group only as DQ → Conv → Q; a BatchNormalization
in between keeps the convolution in float)."""
from collections import defaultdict
from typing import Dict

import numpy as np
import onnx
from onnx import numpy_helper


def _constants(graph: onnx.GraphProto) -> Dict[str, np.ndarray]:
    """Initializers, Constant nodes' values and Identities of those, by
    output name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # topological order: sources come first
        if node.op_type == 'Constant' and node.attribute[0].name == 'value':
            values[node.output[0]] = numpy_helper.to_array(
                node.attribute[0].t)
        elif node.op_type == 'Identity' and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _flip(codes: np.ndarray, zp: np.ndarray, neg: np.ndarray, dtype):
    """Codes and zero points of −(q − z) on the channels ``neg``: (−q, −z)
    where that fits ``dtype``, else the reflection (m − q, m − z) with
    m = q_min + q_max of the type (−1 for int8, 255 for uint8)."""
    info = np.iinfo(dtype)
    m = info.min + info.max
    codes, zp = codes.astype(np.int64), zp.astype(np.int64)
    for c in np.flatnonzero(neg):
        fits = -codes[c].min() <= info.max and -codes[c].max() >= info.min \
            and info.min <= -zp[c] <= info.max
        codes[c] = -codes[c] if fits else m - codes[c]
        zp[c] = -zp[c] if fits else m - zp[c]
    return codes.astype(dtype), zp.astype(dtype)


def _sole_consumers(graph: onnx.GraphProto) -> Dict[str, int]:
    uses: Dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            uses[name] += 1
    for out in graph.output:
        uses[out.name] += 1
    return uses


def fold_batchnorm(graph: onnx.GraphProto) -> int:
    """Fold every ``DQ(W) → Conv → BatchNormalization`` (each output used
    once, all parameters constant) into ``DQ(W') → Conv``. With
    a_c = γ_c / sqrt(var_c + ε): the per-channel scale s'_c = s_c·|a_c|
    over the same codes (negated, or reflected in the type's range, where
    a_c < 0) and the bias b' = β + a·(b − μ). Equal to BN(Conv(x, Ŵ)) up
    to float rounding. Returns the number of folded BatchNorms."""
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    uses = _sole_consumers(graph)
    remove = []
    for bn in [n for n in graph.node if n.op_type == 'BatchNormalization']:
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != 'Conv' or \
                uses[conv.output[0]] != 1:
            continue
        dq = producer.get(conv.input[1])
        bias = conv.input[2] if len(conv.input) > 2 else ''
        params = list(bn.input[1:5]) + list(dq.input[:3] if dq else []) + (
            [bias] if bias else [])
        if dq is None or dq.op_type != 'DequantizeLinear' or \
                uses[dq.output[0]] != 1 or len(dq.input) < 3 or \
                not all(p in consts for p in params):
            continue
        codes, scale, zp = (consts[i] for i in dq.input[:3])
        if scale.ndim == 1 and _attr(dq, 'axis', 1) != 0:
            continue
        gamma, beta, mean, var = (consts[i].astype(np.float64)
                                  for i in bn.input[1:5])
        a = gamma / np.sqrt(var + _attr(bn, 'epsilon', 1e-5))
        cout = codes.shape[0]
        b = consts[bias].astype(np.float64) if bias else np.zeros(cout)
        zp = np.broadcast_to(zp, (cout, ))
        codes, zp = _flip(codes, zp, a < 0, codes.dtype)
        new = {
            'codes': codes,
            'scale': (np.broadcast_to(scale, (cout, )) *
                      np.abs(a)).astype(np.float32),
            'zero_point': zp,
            'bias': (beta + a * (b - mean)).astype(np.float32),
        }
        names = {k: f'{dq.name or dq.output[0]}/bn_folded_{k}' for k in new}
        graph.initializer.extend(
            numpy_helper.from_array(v, names[k]) for k, v in new.items())
        dq.input[:3] = [names['codes'], names['scale'], names['zero_point']]
        keep = [x for x in dq.attribute if x.name != 'axis']
        del dq.attribute[:]
        dq.attribute.extend(keep + [onnx.helper.make_attribute('axis', 0)])
        if bias:
            conv.input[2] = names['bias']
        else:
            conv.input.append(names['bias'])
        conv.output[0] = bn.output[0]
        remove.append(bn)
    for bn in remove:
        graph.node.remove(bn)
    _drop_unused(graph)
    return len(remove)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers and Constant nodes no node reads any more."""
    used = {i for n in graph.node for i in n.input} | {
        o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in [n for n in graph.node if n.op_type == 'Constant'
                 and n.output[0] not in used]:
        graph.node.remove(node)

