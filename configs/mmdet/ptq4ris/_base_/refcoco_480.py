# RefCOCO (UNC splits) for LAVT: mmdet's RefCocoDataset on COCO train2014
# (data/coco/train2014, data/coco/refcoco/{instances.json, refs(unc).p}),
# images resized to 480x480 with PIL's bilinear (as LAVT's torchvision
# Resize on PIL images), masks of the referred objects at the original
# size: RefSegMetric compares there (cIoU = LAVT's overall IoU, oIoU;
# mIoU). LAVT's test.py compares at 480x480 with nearest-resized targets, so
# the numbers can differ slightly. text_mode='original': every sentence of
# every referred object is one expression (LAVT's test protocol); an image
# gets one mask per expression. The split tested: val; testA / testB with
#   --cfg-options test_dataloader.dataset.split=testA
# RefCOCO+ and G-Ref override ann_file / split_file (see their configs).
dataset_type = 'RefCocoDataset'
data_root = 'data/coco/'
backend_args = None
img_scale = (480, 480)
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
             'gt_masks', 'text')
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow',
         backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=False, backend='pillow',
         interpolation='bilinear'),
    # after the resize: the masks stay at the original size
    dict(type='LoadAnnotations', with_mask=True, with_bbox=False,
         with_seg=False, with_label=False),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow',
         backend_args=backend_args),
    dict(type='LoadAnnotations', with_mask=True, with_bbox=False,
         with_seg=False, with_label=False),
    dict(type='Resize', scale=img_scale, keep_ratio=False, backend='pillow',
         interpolation='bilinear'),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
refcoco = dict(
    type=dataset_type,
    data_root=data_root,
    data_prefix=dict(img_path='train2014/'),
    ann_file='refcoco/instances.json',
    split_file='refcoco/refs(unc).p',
    backend_args=backend_args)
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=None,
    # one random sentence per referred object and epoch (as LAVT's
    # training)
    dataset=dict(**refcoco, split='train', text_mode='random',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**refcoco, split='val', text_mode='original',
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='RefSegMetric', metric=['cIoU', 'mIoU'])
test_evaluator = val_evaluator
