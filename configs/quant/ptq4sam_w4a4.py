# PTQ4SAM (Lv et al., CVPR 2024) at W4A4, the reference's exp/config44.yaml
# (chengtao-lv/PTQ4SAM):
#  - BIG: bimodal keys (two KDE peaks) get the sign of each channel folded
#    into the query and key projections (BimodalIntegration);
#  - AGQ: post-Softmax log quantizer of base 2^(1/tau), tau in {1, 2, 4} and
#    its scale searched on the error after attn·V (AGQQuantizer);
#  - weights: per output channel, asymmetric, step × zero point grid search
#    (L2.4, MSEGridObserver), rounding learned (AdaRound) in reconstruction;
#  - activations (Linear inputs, q / k / v): per tensor, asymmetric, the
#    mean of the per-batch min / max (AvgMinMaxObserver, as the
#    reference), steps learned (LSQ) in reconstruction;
#  - QDrop block reconstruction with the reference's settings: 20,000
#    iterations per block, one image per iteration, p = 0.5, Adam 4e-5 on
#    the steps and 1e-3 on the rounding, rounding weight 0.01, beta 20 -> 2
#    after 20 % warm-up;
#  - calibration on 32 images, one per batch, observers seeing the FP signal
#    (parallel: the reference calibrates with fake quantization off);
#  - FP, as the reference: SAM's patch embedding and the mask decoder's
#    output_upscaling, iou_prediction_head and output_hypernetworks_mlps;
#    LayerNorm, GELU and residual adds.
# The overrides are named: a config adds its own by name (e.g.
# overrides=dict(detector=dict(name=r'detector(\..*)?', skip=True))).
quant_cfg = dict(
    w_bits=4,
    a_bits=4,
    weight=dict(
        type='UniformQuantizer',
        granularity='channel',
        observer=dict(type='MSEGridObserver')),
    act=dict(
        type='UniformQuantizer',
        granularity='tensor',
        observer=dict(type='AvgMinMaxObserver')),
    attn=dict(matmul=True, softmax=dict(type='AGQQuantizer')),
    transforms=[dict(type='BimodalIntegration')],
    reconstruction=dict(type='QDropReconstruction', batch_size=1),
    calib=dict(num_samples=32, batch_size=1, mode='parallel'),
    overrides=dict(
        sam_fp_parts=dict(
            name=r'(.*\.)?(patch_embed|output_upscaling|iou_prediction_head'
            r'|output_hypernetworks_mlps)(\..*)?',
            skip=True)))
