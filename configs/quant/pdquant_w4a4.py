# PD-Quant (Liu et al., CVPR 2023) at W4A4: QDrop's reconstruction plus the
# KL divergence between FP and quantized predictions (T = 4, weight
# 1/lambda_r = 10) and, for blocks with BatchNorm, distribution correction
# of their inputs. Needs a classifier (class logits from the model).
_base_ = ['./qdrop_w4a4.py']
quant_cfg = dict(
    reconstruction=dict(
        _delete_=True,
        type='PDQuantReconstruction',
        iters=20000,
        batch_size=32,
        lr=4e-5,
        drop_prob=0.5,
        pd_weight=10.0,
        temperature=4.0,
        dist_correction=True),
)
