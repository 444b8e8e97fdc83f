# RepQ-ViT's W4A4 recipe for two-stage ViT detectors (Mask R-CNN / Cascade
# Mask R-CNN with a Swin / ViT backbone), with the RoI heads (`roi_head.`:
# box and mask heads) at 8 bits: on the demo mask-rcnn_swin-outlier the
# 4-bit RoI heads cost 1.8 APbox and 3.6 APmask, more than the
# reparameterized 4-bit backbone and neck (67.8 / 65.5 with 8-bit RoI
# heads, FP 69.0 / 68.5, first 100 val images; docs/results.md, issue #17).
# Everything else as repq-vit_w4a4; a model without `roi_head.` modules
# gets repq-vit_w4a4.
_base_ = ['./repq-vit_w4a4.py']
quant_cfg = dict(
    overrides=dict(roi_head=dict(name=r'roi_head\..*', w_bits=8, a_bits=8)))
