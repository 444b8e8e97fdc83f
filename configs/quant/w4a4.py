# 4-bit weights and activations; the input of the first layer (image
# pixels: patch embedding or stem conv) stays at 8 bits, as in RepQ-ViT.
# Otherwise the generic recipe (mmptq.core.config.DEFAULT_QUANT_CFG).
quant_cfg = dict(
    w_bits=4,
    a_bits=4,
    overrides=[
        dict(name=r'(.*\.)?(patch_embed\.projection|patch_embed\.proj|'
             r'backbone\.conv1|backbone\.stem\.0\.conv|'
             r'backbone\.layers\.0\.0\.projection)', a_bits=8),
    ])
