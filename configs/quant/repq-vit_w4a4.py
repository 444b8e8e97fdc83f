# RepQ-ViT (Li et al., ICCV 2023) at W4A4:
#  - post-LayerNorm activations calibrated per channel, then reparameterized
#    into per-tensor quantizers folded into LayerNorm and the next Linear
#    (RepQReparam); the weights of those Linears are calibrated again, then
#    every other activation quantizer is calibrated again on the folded
#    model (the reference code keeps their first-pass parameters:
#    RepQReparam(recalibrate=False); docs/methods/repq-vit.md);
#  - post-Softmax: log-sqrt2 quantizer;
#  - uniform asymmetric quantizers whose clip range is the best of the
#    {0.999, 0.9999, 0.99999} percentiles by MSE: weights per output channel,
#    other activations per tensor;
#  - every Conv / Linear of backbone, neck and heads and both attention
#    matmuls are quantized, the image input of the patch embedding / stem at
#    8 bits; LayerNorm, Softmax, GELU and residual adds stay FP;
#  - sequential calibration (each layer sees quantized inputs).
_base_ = ['./w4a4.py']
# (the defaults give the rest of the recipe: per-tensor percentile-searched
# activations, log-sqrt2 softmax, sequential calibration)
quant_cfg = dict(
    weight=dict(observer=dict(type='PercentileSearchObserver')),
    transforms=[dict(type='RepQReparam')],
)
