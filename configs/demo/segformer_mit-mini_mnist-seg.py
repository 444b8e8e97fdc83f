# Demo Segformer on mnist_seg: mmseg's segformer_mit-b0 model shrunk to
# 16-dim / 1 layer per stage MiT (hidden dims 16, 32, 64, 128), a 64-channel
# all-MLP head and BN (not SyncBN, for CPU), trained from scratch with the
# Segformer recipe (AdamW, head lr x10, warmup + poly).
#   python tools/train.py configs/demo/segformer_mit-mini_mnist-seg.py
_base_ = [
    'mmseg::_base_/models/segformer_mit-b0.py',
    './_base_/mnist_seg.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        embed_dims=16,
        num_layers=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        drop_path_rate=0.0),
    decode_head=dict(
        in_channels=[16, 32, 64, 128],
        channels=64,
        num_classes=11,
        norm_cfg=norm_cfg))

max_iters = 2000
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'pos_block': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'head': dict(lr_mult=10.)
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=200),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=200, end=max_iters,
         by_epoch=False)
]
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)
