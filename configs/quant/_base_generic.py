# The generic mmptq recipe (the defaults of mmptq.apis.DEFAULT_QUANT_CFG,
# spelled out): per-channel MSE-searched weights, per-tensor percentile-
# searched activations (RepQ-ViT's search), log√2 post-Softmax quantizer,
# attention matmul operands quantized, sequential calibration.
quant_cfg = dict(
    w_bits=8,
    a_bits=8,
    weight=dict(
        type='UniformQuantizer',
        granularity='channel',
        observer=dict(type='MSEObserver', p=2.0)),
    act=dict(
        type='UniformQuantizer',
        granularity='tensor',
        observer=dict(type='PercentileSearchObserver')),
    attn=dict(
        matmul=True,
        softmax=dict(
            type='LogSqrt2Quantizer',
            observer=dict(type='PercentileSearchObserver'))),
    calib=dict(num_samples=32, batch_size=4, split='train', seed=0,
               mode='sequential'),
)
