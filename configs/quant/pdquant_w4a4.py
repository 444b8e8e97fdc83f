# PD-Quant (Liu et al., CVPR 2023) at W4A4: QDrop's reconstruction plus the
# KL divergence between FP and quantized predictions (T = 4, weight
# 1/lambda_r = 10) and, for blocks with BatchNorm, distribution correction
# of their inputs (the defaults of PDQuantReconstruction). Needs a
# classifier (class logits from the model).
_base_ = ['./qdrop_w4a4.py']
quant_cfg = dict(
    reconstruction=dict(_delete_=True, type='PDQuantReconstruction'))
