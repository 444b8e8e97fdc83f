# APHQ-ViT W4A4 for two-stage ViT detectors (Mask R-CNN / Cascade Mask
# R-CNN with a Swin / ViT backbone): aphq-vit_w4a4 (RepQ-ViT W4A4, then
# APHQ-ViT block reconstruction) with the RoI heads (`roi_head.`: box and
# mask heads) at 8 bits, as repq-vit_w4a4_roi-w8a8. The most accurate W4A4
# recipe measured on the demo mask-rcnn_swin-outlier (all 500 val images,
# 500 iterations per unit: APmask 1.5-2.1 above repq-vit_w4a4_roi-w8a8 on
# three calibration seeds, APbox within the seed spread; docs/results.md,
# issue #17), for minutes of reconstruction instead of seconds.
_base_ = ['./aphq-vit_w4a4.py']
quant_cfg = dict(
    overrides=dict(roi_head=dict(name=r'roi_head\..*', w_bits=8, a_bits=8)))
