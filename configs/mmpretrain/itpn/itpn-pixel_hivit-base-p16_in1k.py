# FP iTPN-B (pixel) ImageNet classifier: mmpretrain's HiViT-B classifier
# (hivit/hivit-base-p16_16xb64_in1k.py: 2 x 2 MLP-only blocks at 56x56 and
# 28x28 tokens, 24 attention blocks with relative position bias at 14x14,
# average pooling, linear head) with the LayerNorm of iTPN (eps 1e-6): the
# backbone that mmpretrain's itpn-pixel_hivit-base pre-training trains,
# fine-tuned for classification. For the observer study of PTQ-for-iTPN:
#   python tools/benchmark.py --model \
#       configs/mmpretrain/itpn/itpn-pixel_hivit-base-p16_in1k.py CHECKPOINT \
#       --quant-cfg minmax_w8a8 ema_w8a8 percentile_w8a8 omse_w8a8 \
#       fqvit_w8a8_attn4
# CHECKPOINT holds mmpretrain key names (a fine-tuned mmpretrain model);
# the official iTPN release (3 + 3 MLP blocks, an fc_norm) does not map
# onto this structure key by key.
_base_ = 'mmpretrain::hivit/hivit-base-p16_16xb64_in1k.py'
model = dict(
    backbone=dict(arch='base', norm_cfg=dict(type='LN', eps=1e-6),
                  drop_path_rate=0.1),
    head=dict(in_channels=512))
