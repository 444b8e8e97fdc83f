# Baseline: FQ-ViT's OMSE observer (shrink [min, max] by 1 - 0.01 i,
# i = 0..89, lowest L2 error) for activations; min/max for weights.
_base_ = ['./minmax_w8a8.py']
quant_cfg = dict(
    act=dict(observer=dict(type='OMSEObserver')),
    attn=dict(softmax=dict(observer=dict(type='OMSEObserver'))),
)
