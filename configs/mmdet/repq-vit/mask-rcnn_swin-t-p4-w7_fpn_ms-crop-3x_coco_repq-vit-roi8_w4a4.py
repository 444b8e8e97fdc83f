# mmptq's recommendation for ViT detectors at W4A4 (not a paper's row):
# mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco with the preset
# repq-vit_w4a4_roi-w8a8 (RepQ-ViT W4A4 for the backbone, neck and RPN; the
# RoI heads at 8 bits; a second calibration pass after the fold). Measured
# on the demo mask-rcnn_swin-outlier only (docs/results.md, issue #17);
# its COCO figures are not measured here (no COCO, no checkpoints offline).
#   python tools/test.py configs/mmdet/repq-vit/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_repq-vit-roi8_w4a4.py \
#       CHECKPOINT --fp-baseline
# Calibration: 32 COCO train images, 4 per batch (the demo study's).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
    '../../quant/repq-vit_w4a4_roi-w8a8.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=32, batch_size=4, split='train'))
