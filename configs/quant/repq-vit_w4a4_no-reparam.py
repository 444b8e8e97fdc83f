# Ablation of repq-vit_w4a4.py: the same quantizers and calibration without
# the scale reparameterization (post-LayerNorm activations per tensor).
_base_ = ['./repq-vit_w4a4.py']
quant_cfg = dict(transforms=[])
