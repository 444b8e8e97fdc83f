# FP Cascade Mask R-CNN with Swin-S (see the Swin-T file).
_base_ = './cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco.py'
model = dict(backbone=dict(depths=[2, 2, 18, 2]))
