# RepQ-ViT W6A6 on COCO: mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco
# (RepQ-ViT COCO table, APbox / APmask: FP 48.5 / 43.3, W6A6 47.8 / 43.0).
#   python tools/test.py configs/mmdet/repq-vit/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco_repq-vit_w6a6.py \
#       CHECKPOINT --fp-baseline
# Calibration: 1 COCO train image through the test pipeline, as the paper.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py',
    '../../quant/repq-vit_w6a6.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=1, batch_size=1, split='train'))
