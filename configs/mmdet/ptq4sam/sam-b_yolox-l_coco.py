# PTQ4SAM's evaluation: SAM-B prompted by the boxes of mmdet's YOLOX-L
# (300e, 49.4 box AP) on COCO val2017, box + mask AP. See
# sam-b_faster-rcnn-r50_coco.py for the commands. Checkpoints, under
# checkpoints/ptq4sam/:
#   https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth
#   https://download.openmmlab.com/mmdetection/v2.0/yolox/yolox_l_8x8_300e_coco/yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth
_base_ = [
    'mmdet::yolox/yolox_l_8xb8-300e_coco.py',
    './_base_/box-prompt-sam_coco.py',
]
model = dict(
    _delete_=True,
    type='mmptq.BoxPromptSAM',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/ptq4sam/'
    'yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth',
    # the detector's own test-time resize and pad (its test_pipeline)
    detector_pipeline=[
        dict(type='Resize', scale=(640, 640), keep_ratio=True),
        dict(type='Pad', pad_to_square=True,
             pad_val=dict(img=(114.0, 114.0, 114.0))),
    ],
    sam_variant='vit_b',
    sam_checkpoint='checkpoints/ptq4sam/sam_vit_b_01ec64.pth')
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
train_dataloader = {{_base_.sam_train_dataloader}}
val_dataloader = {{_base_.sam_test_dataloader}}
test_dataloader = {{_base_.sam_test_dataloader}}
val_evaluator = {{_base_.sam_test_evaluator}}
test_evaluator = {{_base_.sam_test_evaluator}}
