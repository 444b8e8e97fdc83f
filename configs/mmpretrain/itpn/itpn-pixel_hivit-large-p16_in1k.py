# FP iTPN-L (pixel) ImageNet classifier: itpn-pixel_hivit-base-p16_in1k.py
# with mmpretrain's HiViT-L backbone (768 dims, 2 x 2 MLP-only blocks, 40
# attention blocks, 12 heads), as mmpretrain's itpn-pixel_hivit-large
# pre-training.
_base_ = './itpn-pixel_hivit-base-p16_in1k.py'
model = dict(backbone=dict(arch='large'), head=dict(in_channels=768))
