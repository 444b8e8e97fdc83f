# PTQ4SAM's evaluation (Lv et al., CVPR 2024): SAM-B prompted by the boxes of
# mmdet's Faster R-CNN R50 (1x, 37.4 box AP) on COCO val2017, box + mask AP.
#   python tools/test.py configs/mmdet/ptq4sam/sam-b_faster-rcnn-r50_coco.py
# (no checkpoint argument: both checkpoints below load when the model is
# built; nothing is downloaded). Put them under checkpoints/ptq4sam/:
#   https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth
#   https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/faster_rcnn_r50_fpn_1x_coco/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth
# SAM-L / SAM-H: sam-l_*, sam-h_*; quantized: *_ptq4sam-w6a6, *_ptq4sam-w4a4.
_base_ = [
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    './_base_/box-prompt-sam_coco.py',
]
model = dict(
    _delete_=True,
    type='mmptq.BoxPromptSAM',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/ptq4sam/'
    'faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth',
    # the detector's own test-time resize (its test_pipeline)
    detector_pipeline=[dict(type='Resize', scale=(1333, 800), keep_ratio=True)],
    sam_variant='vit_b',
    sam_checkpoint='checkpoints/ptq4sam/sam_vit_b_01ec64.pth')
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
train_dataloader = {{_base_.sam_train_dataloader}}
val_dataloader = {{_base_.sam_test_dataloader}}
test_dataloader = {{_base_.sam_test_dataloader}}
val_evaluator = {{_base_.sam_test_evaluator}}
test_evaluator = {{_base_.sam_test_evaluator}}
