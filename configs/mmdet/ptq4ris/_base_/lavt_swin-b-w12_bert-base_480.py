# LAVT (Yang et al., CVPR 2022) as PTQ4RIS evaluates it: Swin-B (embed 128,
# depths 2-2-18-2, window 12, the ImageNet-22K 384 initialisation) with a
# PWAM + language gate after each stage, BERT-base (uncased, 768-d, 12
# layers, 20 tokens per expression), the SimpleDecoding decoder; 480x480
# inputs (resized, aspect ratio not kept), LAVT's normalisation.
# Model: mmptq.LAVT (mmptq/models/lavt.py). Weights: the released LAVT
# checkpoints converted by tools/convert_lavt.py; the BERT weights are in
# the converted file (text_encoder.*), so the text encoder is built here from
# its architecture alone and only the tokenizer files are read from
# data/bert-base-uncased (vocab.txt + tokenizer_config.json), e.g.:
#   huggingface-cli download bert-base-uncased vocab.txt \
#       tokenizer_config.json config.json --local-dir data/bert-base-uncased
# (on a machine with internet access; nothing is downloaded at run time).
# The data (mmdet's RefCocoDataset): ./refcoco_480.py.
_base_ = ['mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
model = dict(
    type='mmptq.LAVT',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        # torchvision's ImageNet mean / std (LAVT's T.Normalize), RGB
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(
        type='SwinTransformer',
        embed_dims=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        mlp_ratio=4,
        qkv_bias=True,
        patch_norm=True,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        # training from scratch starts from Microsoft's Swin-B:
        # init_cfg=dict(type='Pretrained', checkpoint='https://github.com/
        #     SwinTransformer/storage/releases/download/v1.0.0/
        #     swin_base_patch4_window12_384_22k.pth'), convert_weights=True
        ),
    # bert-base-uncased (transformers' BertConfig defaults)
    text_encoder=dict(
        config=dict(
            vocab_size=30522,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            type_vocab_size=2)),
    tokenizer='data/bert-base-uncased',
    max_tokens=20,
    freeze_text_encoder=False,
    num_heads_fusion=(1, 1, 1, 1),
    fusion_drop=0.0,
    class_weight=(0.9, 1.1))

# LAVT's training: AdamW lr 5e-5, weight decay 0.01 (none on the Swin norms
# and relative position tables), 40 epochs, polynomial decay (power 0.9)
# per iteration; 4 GPUs x 8 (LAVT: 8 expressions per GPU, here 8 images
# with one expression per referred object each).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-5, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(
        norm=dict(decay_mult=0.0),
        absolute_pos_embed=dict(decay_mult=0.0),
        relative_position_bias_table=dict(decay_mult=0.0))))
max_epochs = 40
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=max_epochs,
         by_epoch=True, convert_to_iter_based=True)
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, save_best='cIoU',
                    rule='greater', max_keep_ckpts=1))
auto_scale_lr = dict(enable=False, base_batch_size=32)
