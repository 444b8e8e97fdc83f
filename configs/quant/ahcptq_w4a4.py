# AHCPTQ (Zhang et al., ICCV 2025, arXiv:2503.03088) at W4A4, the
# reference's exp/config44.yaml (Keio-CSG/AHCPTQ): PTQ4SAM's recipe
# (ptq4sam_w4a4.py: BIG, AGQ, QDrop reconstruction with 20,000 iterations
# per block, AdaRound weights grid-searched with L2.4, per-tensor
# AvgMinMax activations, 32 calibration images, the same FP parts), kept
# as the reference keeps it (ptq4sam: BIG True, AGQ True; recon: the same
# settings), with two activation quantizers replaced:
#  - HLUQ, Hybrid Log-Uniform Quantization (HLUQuantizer): the input of
#    every MLP's second Linear (SAM's `mlp.lin2`, post-GELU in the image
#    encoder, post-ReLU in the mask decoder, as the reference's
#    QuantEncoderMLPBlock / QuantDecoderMLPBlock; mmcv's `ffn.layers.1`):
#    a log2 grid from the minimum up to a searched split, a uniform grid
#    above it, one 4-bit code space, split chosen by the Linear's output
#    error;
#  - CAG, Channel-Aware Grouping (CAGQuantizer): the input of every linear
#    projection (SAM's `qkv`, `q_proj`, `k_proj`, `v_proj` and the MLPs'
#    `lin1`, as the reference's 'group' layers): channels clustered by
#    their ranges into 4 groups (the reference's `group: 4`) through 32,
#    16, 8 clusters, one asymmetric uniform quantizer per group, group
#    steps learned in reconstruction.
# At test time nothing is dropped: mmptq's QDrop mixes FP and quantized
# activations only inside the reconstruction's fitting loop (the
# reference, like PTQ4SAM's code, left drop_prob 0.5 on the quantizers of
# the blocks at evaluation, the bug AHCPTQ's README reports).
_base_ = ['./ptq4sam_w4a4.py']
quant_cfg = dict(
    overrides=dict(
        hluq_post_gelu=dict(
            name=r'(.*\.)?(mlp\.lin2|ffn\.layers\.1)',
            act=dict(type='HLUQuantizer')),
        cag_projections=dict(
            name=r'(.*\.)?(qkv|q_proj|k_proj|v_proj|mlp\.lin1)',
            act=dict(type='CAGQuantizer', groups=4))))
