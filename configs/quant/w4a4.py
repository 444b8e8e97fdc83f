# 4-bit weights and activations; the input of the first layer (image
# pixels: patch embedding or stem conv, the first op with a weight that the
# model runs, whatever its name) stays at 8 bits, as in RepQ-ViT.
# Otherwise the generic recipe (mmptq.core.config.DEFAULT_QUANT_CFG).
quant_cfg = dict(
    w_bits=4,
    a_bits=4,
    overrides=dict(first_layer=dict(first_op=True, a_bits=8)))
