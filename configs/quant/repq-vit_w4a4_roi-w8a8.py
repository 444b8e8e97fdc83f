# RepQ-ViT's W4A4 recipe (repq-vit_w4a4) for two-stage ViT detectors, with
# the RoI heads (box and mask heads of Mask R-CNN / Cascade Mask R-CNN) at
# 8 bits: on the demo mask-rcnn_swin-outlier the 4-bit RoI heads cost 1.8
# APbox and 3.6 APmask while the reparameterized 4-bit backbone and neck are
# within 2.0 / 4.0 of FP (docs/results.md, issue #17). Everything else as
# repq-vit_w4a4; a model without `roi_head.` modules gets repq-vit_w4a4.
_base_ = ['./repq-vit_w4a4.py']
quant_cfg = dict(
    overrides=dict(roi_head=dict(name=r'roi_head\..*', w_bits=8, a_bits=8)))
