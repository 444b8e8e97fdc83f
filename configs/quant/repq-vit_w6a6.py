# RepQ-ViT at W6A6: the recipe of repq-vit_w4a4.py with 6-bit weights and
# activations (the image input of the first layer at 8 bits).
_base_ = ['./repq-vit_w4a4.py']
quant_cfg = dict(w_bits=6, a_bits=6)
