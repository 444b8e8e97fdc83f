# mnist_cls (built by `make data`): MNIST digits as an mmpretrain
# CustomDataset, 28x28, classes '0'..'9', 10k train / 2k val.
dataset_type = 'CustomDataset'
data_root = 'data/mnist_cls/'
metainfo = dict(classes=('0', '1', '2', '3', '4', '5', '6', '7', '8', '9'))
data_preprocessor = dict(
    num_classes=10,
    # MNIST mean / std (0.1307, 0.3081) in 0-255, same on the 3 channels
    mean=[33.32, 33.32, 33.32],
    std=[78.57, 78.57, 78.57],
    to_rgb=False,
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    # small shifts and scales; no flips (a mirrored digit is another digit)
    dict(type='RandomResizedCrop', scale=28, crop_ratio_range=(0.8, 1.0),
         aspect_ratio_range=(0.9, 1.1)),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=128,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='meta/train.txt',
        data_prefix='train',
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='meta/val.txt',
        data_prefix='val',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
