# 8-bit weights and activations, otherwise the generic recipe
# (mmptq.core.config.DEFAULT_QUANT_CFG). At 8 bits per-channel min/max weights are
# as accurate as an MSE search and far cheaper on large models.
quant_cfg = dict(
    w_bits=8, a_bits=8, weight=dict(observer=dict(type='MinMaxObserver')))
