# PTQ4RIS (Jiang et al., ICRA 2025) at W4A4 for LAVT (image encoder: an
# mmdet SwinTransformer under `backbone`; text encoder: a BERT under
# `text_encoder`), after the reference's ptq4ris.py (gugu511yy/PTQ4RIS):
#  - DRQ, Dual-Region Quantization: the post-Softmax probabilities on two
#    uniform grids split at a searched power of two (attn.softmax), the
#    post-GELU input of every mmcv FFN's second Linear (`ffn.layers.1`,
#    Swin's fc2) on a negative and a positive grid, the positive step
#    searched (DualRegionQuantizer);
#  - RORQ, Reorder-based Outlier-Retained Quantization: the input of every
#    Linear of the text encoder (query / key / value / dense) in up to 10
#    groups of channels split at mean + 3 std of the channel maxima, each
#    group with its own asymmetric uniform quantizer
#    (OutlierReorderQuantizer, max_groups = the reference's max_iters);
#    the regex names the Linear layers only, so that the text encoder's
#    attention matmul operands keep the generic activation quantizer;
#  - weights: per output channel, asymmetric, range by the L2.4 shrink
#    search of [min, max] (MSEObserver, 100 candidates). The reference's
#    UniformAffineQuantizer (scale_method 'mse', channel_wise=True) runs
#    the step x zero point grid (MSEGridObserver: 100 x 2^b candidates,
#    which contains these 100): on a 384x1536 weight at 4 bits it costs 9x
#    the time (94 s vs 11 s on 2 shared CPU cores; at 8 bits 16x more) for
#    1.3 % less weight MSE (0.01167 vs 0.01182 relative). Set
#    weight=dict(observer=dict(type='MSEGridObserver')) for the reference's;
#  - other activations: per tensor, asymmetric, range by the L2.4 shrink
#    search of [min, max] (MSEObserver), per batch and averaged; the
#    reference's 'mse' activation init is the step x zero point grid search
#    on one batch of all 32 samples, 256x the candidates at 8 bits;
#  - calibration on 32 samples (the README's --num_samples 32), one per
#    batch, observers seeing the FP signal (parallel: PTQ4ViT's calibrator
#    with sequential=False);
#  - no reconstruction: ptq4ris.py imports PD-Quant's block_reconstruction
#    and args.py has its settings (iters_w 20000, weight 0.01, lamb_r 0.1,
#    lamb_c 0.02, prob 0.5), but main() never calls it. To add it:
#    quant_cfg.reconstruction=dict(type='PDQuantReconstruction', ...).
# DRQ-softmax is the attn.softmax of every attention mmptq finds (the
# reference: the Swin backbone's only; its BERT softmax is uniform).
# The overrides are named: a config adds its own by name.
quant_cfg = dict(
    w_bits=4,
    a_bits=4,
    weight=dict(
        type='UniformQuantizer',
        granularity='channel',
        observer=dict(type='MSEObserver', p=2.4)),
    act=dict(
        type='UniformQuantizer',
        granularity='tensor',
        observer=dict(type='MSEObserver', p=2.4)),
    attn=dict(
        matmul=True,
        softmax=dict(type='DualRegionQuantizer', region='softmax')),
    reconstruction=None,
    calib=dict(num_samples=32, batch_size=1, mode='parallel'),
    overrides=dict(
        # the image input of the first op (LAVT: the patch embedding) at 8
        # bits, as the w4a4 preset's rule of the same name (the reference:
        # a_bit=32 on every Conv2d, i.e. the patch embedding's input FP)
        first_layer=dict(first_op=True, a_bits=8),
        drq_post_gelu=dict(
            name=r'(.*\.)?ffn\.layers\.1',
            act=dict(type='DualRegionQuantizer', region='gelu')),
        rorq_text_linear=dict(
            name=r'text_encoder\..*\.(query|key|value|dense)',
            act=dict(type='OutlierReorderQuantizer', max_groups=10))))
