# COCO val2017 for a box-prompted SAM (mmptq.BoxPromptSAM), as mmdet's COCO
# configs (data_root data/coco). Its keys have their own names, so this file
# can sit beside an mmdet detector config among the bases; the PTQ4SAM
# configs take them over with {{_base_.sam_*}} (each holds _delete_=True:
# the detector's own dataloaders and evaluator are replaced, not merged).
# The model gets the original image (no resize: the detector's resize is
# the model's detector_pipeline, SAM's its ResizeLongestSide) with the
# ground-truth boxes (prompt='gt').
sam_data_root = 'data/coco/'
sam_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape')),
]
sam_test_dataloader = dict(
    _delete_=True,
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        data_root=sam_data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=sam_test_pipeline))
# the calibration images (quant_cfg.calib.split='train'; mmptq runs them
# through the test pipeline): COCO train2017 images with objects
sam_train_dataloader = dict(
    _delete_=True,
    batch_size=1,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        data_root=sam_data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=sam_test_pipeline))
sam_test_evaluator = dict(
    _delete_=True,
    type='CocoMetric',
    ann_file=sam_data_root + 'annotations/instances_val2017.json',
    metric=['bbox', 'segm'],
    format_only=False)
