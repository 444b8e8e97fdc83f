# Demo Mask R-CNN with a small Swin backbone on mnist_det: the proxy of the
# RepQ-ViT COCO table (Mask R-CNN Swin-T). The upstream config, shrunk:
# Swin 32-dim / depths 2,2,2,2 / window 4 at 128x128, 64-channel FPN and heads
# (3 epochs, ~17 min on 2 CPU cores),
# trained from scratch (no pretrained weights: nothing is downloaded).
# Built like mmdet's swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py, on the same
# bases with the COCO dataset base swapped for mnist_det.
#   python tools/train.py configs/demo/mask-rcnn_swin-mini_fpn_mnist-det.py
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './_base_/mnist_det.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=32,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        mlp_ratio=4,
        qkv_bias=True,
        drop_path_rate=0.1,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=10),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=10)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100),
                  rcnn=dict(max_per_img=20)))

max_epochs = 3
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=200),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=0.01,
         begin=0, end=max_epochs, by_epoch=True, convert_to_iter_based=True)
]
optim_wrapper = dict(
    type='OptimWrapper',
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }),
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-3, betas=(0.9, 0.999),
        weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
auto_scale_lr = dict(enable=False, base_batch_size=8)
randomness = dict(seed=0)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
