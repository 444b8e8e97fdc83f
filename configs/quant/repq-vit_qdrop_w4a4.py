# RepQ-ViT's W4A4 recipe (scale reparameterization, log-sqrt2 softmax) with
# QDrop block reconstruction on top (the combination PTQ4SAM builds on).
_base_ = ['./repq-vit_w4a4.py', './_qdrop.py']
quant_cfg = dict(reconstruction={{_base_.qdrop}}, calib={{_base_.qdrop_calib}})
