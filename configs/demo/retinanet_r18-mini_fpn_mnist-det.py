# Demo RetinaNet with a small ResNet-18 (16 base channels) on mnist_det,
# 64-channel FPN and head, trained from scratch (BN trained, no frozen
# stages, no pretrained weights). Built like mmdet's
# retinanet/retinanet_r18_fpn_1x_coco.py with the COCO base swapped.
#   python tools/train.py configs/demo/retinanet_r18-mini_fpn_mnist-det.py
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    './_base_/mnist_det.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
model = dict(
    backbone=dict(
        depth=18,
        base_channels=16,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64),
    bbox_head=dict(
        num_classes=10,
        in_channels=64,
        feat_channels=64,
        # digits are 20-56 px: anchors from 24 px at stride 8
        anchor_generator=dict(octave_base_scale=3)))

# boxes only
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=200),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=0.01,
         begin=0, end=max_epochs, by_epoch=True, convert_to_iter_based=True)
]
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
