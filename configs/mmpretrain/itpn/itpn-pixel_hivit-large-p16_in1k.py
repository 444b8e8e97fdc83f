# FP iTPN-L (pixel) ImageNet classifier (itpn_large_2240_patch16_224):
# itpn-pixel_hivit-base-p16_in1k.py with 2 + 2 MLP-only blocks and 40
# attention blocks of 768 dims, 12 heads. Convert a released checkpoint
# with tools/convert_itpn.py ... --config this file.
_base_ = './itpn-pixel_hivit-base-p16_in1k.py'
model = dict(
    backbone=dict(
        arch=dict(embed_dims=768, depths=[2, 2, 40], num_heads=12)),
    head=dict(in_channels=768))
