# mmptq's most accurate recipe for ViT detectors at W4A4 (not a paper's
# row): mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco with the preset
# aphq-vit_w4a4_roi-w8a8 (RepQ-ViT W4A4, APHQ-ViT block reconstruction, the
# RoI heads at 8 bits). Measured on the demo mask-rcnn_swin-outlier only
# (docs/results.md, issue #17); its COCO figures are not measured here (no
# COCO, no checkpoints offline). The reconstruction's 20,000 iterations
# per unit are GPU hours at this size; quant_cfg.reconstruction.iters
# trades accuracy for time.
#   python tools/test.py configs/mmdet/repq-vit/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_aphq-vit-roi8_w4a4.py \
#       CHECKPOINT --fp-baseline
# Calibration and reconstruction: 256 COCO train images, one per batch, as
# the reference APHQ-ViT detection code (optim_size 256, batch 1).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
    '../../quant/aphq-vit_w4a4_roi-w8a8.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=256, batch_size=1, split='train'))
