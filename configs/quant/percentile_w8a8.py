# Baseline: FQ-ViT's percentile observer (1e-5 tails, EMA across batches)
# for activations; min/max for weights.
_base_ = ['./minmax_w8a8.py']
quant_cfg = dict(
    act=dict(observer=dict(type='PercentileObserver', percentile=0.99999,
                           momentum=0.01)),
    attn=dict(softmax=dict(observer=dict(type='PercentileObserver'))),
)
