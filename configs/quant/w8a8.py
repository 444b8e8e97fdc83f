# 8-bit weights and activations. At 8 bits per-channel min/max weights are
# as accurate as an MSE search and far cheaper on large models.
_base_ = ['./_base_generic.py']
quant_cfg = dict(
    w_bits=8,
    a_bits=8,
    weight=dict(observer=dict(_delete_=True, type='MinMaxObserver')))
