# APHQ-ViT (Wu et al., CVPR 2025) at W4A4 with its MLP Reconstruction: a
# DIFFERENT MODEL. Before quantization, GELU becomes ReLU in every MLP (the
# `ffn` / `mlp` modules) and each MLP's Linear weights are refitted in FP to
# reproduce the original GELU MLP's output on the calibration images, with
# the average-perturbation-Hessian weighted loss plus a term for the hidden
# activation clipped at its 99.9th positive percentile
# (APHQMLPReconstruction, 20,000 Adam steps per MLP, lr 4e-5). Then
# aphq-vit_w4a4 (RepQ-ViT's W4A4 recipe and the APH block reconstruction).
# The FP accuracy of the rewritten model differs from the original's; use
# aphq-vit_w4a4 to quantize the model as it is.
_base_ = ['./aphq-vit_w4a4.py']
quant_cfg = dict(transforms=[
    dict(type='APHQMLPReconstruction'),
    dict(type='RepQReparam'),
])
