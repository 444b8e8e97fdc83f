# RepQ-ViT W4A4 on COCO: cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco
# (the RepQ-ViT COCO table, APbox / APmask: FP 51.9 / 45.0; see the paper for W4A4).
#   python tools/test.py configs/mmdet/repq-vit/cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco_repq-vit_w4a4.py \
#       CHECKPOINT --fp-baseline
# Calibration: 1 COCO train image through the test pipeline, as the paper.
_base_ = [
    './cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco.py',
    '../../quant/repq-vit_w4a4.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=1, batch_size=1, split='train'))
