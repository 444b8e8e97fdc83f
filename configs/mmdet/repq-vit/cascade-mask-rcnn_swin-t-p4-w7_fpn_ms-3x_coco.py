# FP Cascade Mask R-CNN with Swin-T (the row of the RepQ-ViT COCO table;
# mmdet 3.x ships no such config): mmdet's cascade-mask-rcnn_r50_fpn_ms-3x
# with the Swin-T backbone of swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x.
# Checkpoints of the Swin repository (mmdet 2.x key names) must first be
# converted to mmdet 3.x names.
_base_ = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_ms-3x_coco.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=None),
    neck=dict(in_channels=[96, 192, 384, 768]))
