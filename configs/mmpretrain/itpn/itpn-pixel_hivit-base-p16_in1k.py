# FP iTPN-B (pixel) ImageNet classifier, as iTPN's fine-tuning code and
# PTQ-for-iTPN build it (itpn_base_3324_patch16_224): HiViT with 3 + 3
# MLP-only blocks at 56x56 and 28x28 tokens, 24 attention blocks with
# relative position bias at 14x14 (512 dims, 8 heads), mean pooling, then a
# LayerNorm (fc_norm, eps 1e-6) and a linear head. mmpretrain's HiViT
# cannot hold 3 + 3 MLP blocks, hence mmptq's iTPNFinetuneHiViT; the
# ImageNet data settings (resize 256 bicubic, centre crop 224, ImageNet
# mean / std) are mmpretrain's hivit ones, which are also PTQ-for-iTPN's.
#
# A released checkpoint (official iTPN or PTQ-for-iTPN) is converted once:
#   python tools/convert_itpn.py ITPN_CKPT itpn-b_mm.pth \
#       --config configs/mmpretrain/itpn/itpn-pixel_hivit-base-p16_in1k.py
# then the observer study of PTQ-for-iTPN runs in one command:
#   python tools/benchmark.py --model \
#       configs/mmpretrain/itpn/itpn-pixel_hivit-base-p16_in1k.py itpn-b_mm.pth \
#       --quant-cfg minmax_w8a8 ema_w8a8 percentile_w8a8 omse_w8a8 \
#       fqvit_w8a8_attn4
_base_ = 'mmpretrain::hivit/hivit-base-p16_16xb64_in1k.py'
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmptq.iTPNFinetuneHiViT',
        arch=dict(embed_dims=512, depths=[3, 3, 24], num_heads=8),
        img_size=224,
        drop_path_rate=0.1),
    neck=None,
    head=dict(in_channels=512))
