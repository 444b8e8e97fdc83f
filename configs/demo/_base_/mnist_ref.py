# mnist_ref (built by `make data`): referring segmentation in RefCOCO's
# format, read by mmdet's own RefCocoDataset: 128x128 canvases with 2-4
# MNIST digits, `instances.json` (COCO boxes + RLE masks) and `refs(unc).p`
# (refs with sentences such as "the seven", "the digit on the left", "the
# larger four", "the three below the eight", each naming exactly one digit).
# Splits: train, val (all kinds), testA (the digit's name alone), testB
# (spatial / relational). See mmptq/datasets/refer.py.
#
# A packed sample holds one (sentence, mask) pair per entry:
# data_sample.text (list of str, in the metainfo) and data_sample.gt_masks
# (BitmapMasks, N x H x W, in the metainfo; also gt_instances.masks), N
# equal. text_mode: 'random' for train (one random sentence per ref, drawn
# when the dataset is built), 'original' for val / test (every sentence is
# evaluated, as LAVT evaluates RefCOCO; mmdet's refcoco base uses
# 'select_first', one per ref).
#
# Evaluate testA / testB:
#   --cfg-options test_dataloader.dataset.split=testA
# or, in a config inheriting this one:
#   test_dataloader = _base_.testA_dataloader  # (or testB_dataloader)
dataset_type = 'RefCocoDataset'
data_root = 'data/mnist_ref/'
ann_file = 'instances.json'
split_file = 'refs(unc).p'
data_prefix = dict(img_path='images/')
backend_args = None
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
             'gt_masks', 'text')

# no flips: a mirrored digit is another (or no) digit, and left/right
# would swap in the sentences
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_mask=True, with_bbox=False,
         with_seg=False, with_label=False),
    dict(type='Resize', scale=(128, 128), keep_ratio=False),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
# as mmdet's refcoco base: Resize before LoadAnnotations, so gt_masks stay
# at the original size (predictions are compared at ori_shape; the
# canvases are 128x128 already)
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(128, 128), keep_ratio=False),
    dict(type='LoadAnnotations', with_mask=True, with_bbox=False,
         with_seg=False, with_label=False),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file=ann_file,
        split_file=split_file,
        data_prefix=data_prefix,
        split='train',
        text_mode='random',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file=ann_file,
        split_file=split_file,
        data_prefix=data_prefix,
        split='val',
        text_mode='original',
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
testA_dataloader = dict(
    val_dataloader, dataset=dict(val_dataloader['dataset'], split='testA'))
testB_dataloader = dict(
    val_dataloader, dataset=dict(val_dataloader['dataset'], split='testB'))
val_evaluator = dict(type='RefSegMetric', metric=['cIoU', 'mIoU'])
test_evaluator = val_evaluator
