# Observer study of FQ-ViT (Lin et al., IJCAI 2022) / PTQ-for-iTPN at W8A8,
# MinMax row; ema_w8a8, percentile_w8a8 and omse_w8a8 change only the
# activation observer. The study design of their code:
#  - weights: int8 symmetric per output channel, running min/max;
#  - activations: uint8 asymmetric per tensor with the studied observer:
#    the inputs of every Linear / Conv, the operands of both attention
#    matmuls, the softmax output (uniform, 8 bits) and the inputs of every
#    LayerNorm (the residual stream; per tensor, no Power-of-Two Factor);
#  - calibration on 1,000 train images in 10 batches of 100, observers on
#    the FP model (calib mode 'parallel'), as their `--calib-iter 10
#    --calib-batchsize 100`.
# fqvit_w8a8_attn4.py adds PTF and Log-Int-Softmax on top of MinMax.
_observer = dict(type='MinMaxObserver')
quant_cfg = dict(
    weight=dict(symmetric=True, observer=dict(type='MinMaxObserver')),
    act=dict(observer=_observer),
    norm=dict(type='UniformQuantizer', observer=_observer),
    attn=dict(softmax=dict(type='UniformQuantizer', observer=_observer)),
    calib=dict(num_samples=1000, batch_size=100, mode='parallel'),
)
