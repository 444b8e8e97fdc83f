# Generic recipe (mmptq.core.config.DEFAULT_QUANT_CFG): per-channel MSE-searched
# weights, per-tensor percentile-searched activations, log√2 softmax.
quant_cfg = dict(w_bits=6, a_bits=6)
