# Demo HiViT on mnist_cls: mmpretrain's HiViT classifier (HiViT backbone,
# global average pooling, linear head; label smoothing, AdamW + cosine
# schedule of the HiViT recipe), shrunk to 64 dims in the main stage, 4
# heads, depths 1-1-7 (one MLP-only block pair in each of the two early
# stages at 28x28 / 14x14 tokens of 16 / 32 dims, then 7 attention blocks
# with relative position bias on 7x7 tokens), 4x4 patches of 4x4 inner
# patches on 28x28 digits, no Mixup/CutMix, trained from scratch.
#   python tools/train.py configs/demo/hivit-mini_mnist-cls.py
# (mmpretrain's HiViT also runs its early-stage loop over ``out_indices``:
# the main stage needs more blocks than the early stages have, 6 here.)
_base_ = [
    './_base_/mnist_cls.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_hivit.py',
    'mmpretrain::_base_/default_runtime.py',
]
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='HiViT',
        arch=dict(embed_dims=64, depths=[1, 1, 7], num_heads=4),
        img_size=28,
        patch_size=4,
        inner_patches=4,
        out_indices=[6],
        ape=True,
        rpe=True),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
    ),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
    ])

max_epochs = 15
optim_wrapper = dict(
    optimizer=dict(lr=2e-3), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=2,
         end=max_epochs, convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
auto_scale_lr = dict(enable=False)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
