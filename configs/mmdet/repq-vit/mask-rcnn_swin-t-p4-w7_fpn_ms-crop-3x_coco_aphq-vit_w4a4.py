# APHQ-ViT W4A4 on COCO: mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco
# (APHQ-ViT COCO table, APbox / APmask: FP 46.0 / 41.6, W4A4 38.9 / 38.1; the paper's
# row includes its MLP Reconstruction (GELU -> ReLU, off here: a
# different model) and its own quantizers, so expect this config, the
# aphq-vit_w4a4 preset, to land between RepQ-ViT and that row).
#   python tools/test.py configs/mmdet/repq-vit/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco_aphq-vit_w4a4.py \
#       CHECKPOINT --fp-baseline
# Calibration and reconstruction: 256 COCO train images, one per batch, as
# the reference detection code (optim_size 256, batch 1).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
    '../../quant/aphq-vit_w4a4.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=256, batch_size=1, split='train'))
