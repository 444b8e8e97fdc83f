# RepQ-ViT W6A6 on COCO: cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco
# (RepQ-ViT COCO table, APbox / APmask: FP 50.4 / 43.7, W6A6 50.0 / 43.5).
#   python tools/test.py configs/mmdet/repq-vit/cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco_repq-vit_w6a6.py \
#       CHECKPOINT --fp-baseline
# Calibration: 1 COCO train image through the test pipeline, as the paper.
_base_ = [
    './cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco.py',
    '../../quant/repq-vit_w6a6.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=1, batch_size=1, split='train'))
