# PTQ4SAM's evaluation: SAM-B prompted by the boxes of mmdet's DINO-4scale
# R50 (12e, 49.0 box AP; up to 300 boxes per image, as mmdet's config) on
# COCO val2017, box + mask AP. See sam-b_faster-rcnn-r50_coco.py for the
# commands. Checkpoints, under checkpoints/ptq4sam/:
#   https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth
#   https://download.openmmlab.com/mmdetection/v3.0/dino/dino-4scale_r50_8xb2-12e_coco/dino-4scale_r50_8xb2-12e_coco_20221202_182705-55b2bba2.pth
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    './_base_/box-prompt-sam_coco.py',
]
model = dict(
    _delete_=True,
    type='mmptq.BoxPromptSAM',
    detector={{_base_.model}},
    detector_checkpoint='checkpoints/ptq4sam/'
    'dino-4scale_r50_8xb2-12e_coco_20221202_182705-55b2bba2.pth',
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
