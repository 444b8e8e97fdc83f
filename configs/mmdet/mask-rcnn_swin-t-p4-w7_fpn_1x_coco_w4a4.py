# Quantize an upstream mmdet config: inherit it, import mmptq, add a
# quant_cfg (here the W4A4 preset) and let mmptq's loop run the test.
#   python tools/test.py configs/mmdet/mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4.py \
#       mask_rcnn_swin-t-p4-w7_fpn_1x_coco_<...>.pth --fp-baseline
# (mmdet's own tools/test.py runs it the same way: test_cfg points at mmptq.)
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    '../quant/w4a4.py',
]
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
test_cfg = dict(type='mmptq.QuantTestLoop')
quant_cfg = dict(calib=dict(num_samples=32, batch_size=1, split='train'))
