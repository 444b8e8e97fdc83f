# Demo SAM on mnist_det: PTQ4SAM's model (mmptq.BoxPromptSAM) in miniature.
# segment-anything's classes: a ViT image encoder 96-dim, depth 4, 4 heads,
# 8x8 patches of the 128x128 canvas (16x16 embedding), window 8 with the last
# block global; the standard prompt encoder and mask decoder (two-way
# transformer depth 2, 4 heads) at 128 dims (1.4 M parameters). Trained from
# scratch with jittered ground-truth boxes as prompts (SAM's noise, focal 20 :
# dice 1 + IoU MSE), 1,800 iterations of 4 images (8.4 min on 2 shared CPU
# cores). Evaluated, as in the paper, with a detector's boxes: the demo
# RetinaNet (frozen, not trained; its weights are part of this checkpoint).
#   OMP_NUM_THREADS=1 python tools/train.py configs/demo/sam-mini_mnist-det.py \
#       --cfg-options model.detector_checkpoint=checkpoints/demo/retinanet_r18-mini_fpn_mnist-det.pth \
#           val_cfg=None val_dataloader=None val_evaluator=None \
#       --publish checkpoints/demo/sam-mini_mnist-det.pth --publish-dtype float16
# (OMP_NUM_THREADS=1: on a busy 2-core machine two OpenMP threads per op made
# each iteration 20x slower.)
_base_ = ['./retinanet_r18-mini_fpn_mnist-det.py']
model = dict(
    _delete_=True,
    type='mmptq.BoxPromptSAM',
    detector={{_base_.model}},
    detector_pipeline=[dict(type='Resize', scale=(128, 128), keep_ratio=True)],
    image_encoder=dict(img_size=128, patch_size=8, embed_dim=96, depth=4,
                       num_heads=4, window_size=8, global_attn_indexes=(3, )),
    mask_decoder=dict(mlp_dim=512, num_heads=4, iou_head_hidden_dim=128),
    prompt_embed_dim=128,
    # the 20 best of RetinaNet's 100 boxes (the demo Mask R-CNN's
    # max_per_img; the canvases hold 1-6 digits)
    max_prompts=20)
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)

# the original images (SAM resizes them itself), boxes and instance masks
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape')),
]
train_dataloader = dict(
    batch_size=4, batch_sampler=None, dataset=dict(pipeline=train_pipeline))
# one image per batch: each decoder op runs once per forward (calibration)
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
quant_cfg = dict(
    calib=dict(batch_size=1, split='train'),
    overrides=dict(detector=dict(name=r'detector(\..*)?', skip=True)))

max_iters = 1800
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                 max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min_ratio=0.01,
         by_epoch=False, begin=0, end=max_iters)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999),
                   weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=1.0))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
