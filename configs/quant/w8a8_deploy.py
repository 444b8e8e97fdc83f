# The W8A8 setting to export for ONNX Runtime (tools/export.py,
# tools/benchmark.py --runtime onnxruntime): every quantizer a QDQ pair
# that ORT's int8 kernels (u8 x s8 dot products, AVX-512 VNNI / AVX2)
# take as they are, otherwise the generic recipe of w8a8:
#  - weights: int8 symmetric per output channel, min/max (asymmetric uint8
#    weights, w8a8's, make ORT's int8 convolutions and matmuls slower than
#    FP32: 1.0-1.1x vs ORT FP32 on ResNet-50, see docs/export.md);
#  - activations: uint8 asymmetric per tensor, the generic percentile
#    search (the default act quantizer);
#  - the softmax of attention: uniform 8 bit, min/max (w8a8's log-sqrt2
#    quantizer is not uniform: it exports as float ops and the attention
#    matmuls then stay float);
#  - LayerNorm inputs stay FP (norm=None), as in w8a8.
quant_cfg = dict(
    w_bits=8,
    a_bits=8,
    weight=dict(symmetric=True, observer=dict(type='MinMaxObserver')),
    attn=dict(softmax=dict(type='UniformQuantizer',
                           observer=dict(type='MinMaxObserver'))),
)
