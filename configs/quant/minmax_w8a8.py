# Baseline: running min/max for weights (per channel) and activations
# (per tensor), uniform softmax.
quant_cfg = dict(
    w_bits=8,
    a_bits=8,
    weight=dict(type='UniformQuantizer', granularity='channel',
                observer=dict(type='MinMaxObserver')),
    act=dict(type='UniformQuantizer', granularity='tensor',
             observer=dict(type='MinMaxObserver')),
    attn=dict(matmul=True,
              softmax=dict(type='UniformQuantizer',
                           observer=dict(type='MinMaxObserver'))),
)
