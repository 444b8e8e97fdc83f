"""Tiny datasets written by the tests, and configs that use them."""
import json
import os.path as osp

import numpy as np
from PIL import Image


def make_tiny_coco(root: str, num_images: int = 6, size: int = 64,
                   seed: int = 0) -> str:
    """Images with 1-2 filled rectangles of 2 classes and a COCO json with
    boxes and polygon masks; the same file serves as train and val."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
        for _ in range(rng.integers(1, 3)):
            cat = int(rng.integers(1, 3))
            w, h = (int(v) for v in rng.integers(14, 30, size=2))
            x, y = (int(v) for v in rng.integers(0, size - 30, size=2))
            img[y:y + h, x:x + w] = (220, 40, 40) if cat == 1 else (40, 40, 220)
            anns.append(dict(
                id=len(anns) + 1, image_id=i + 1, category_id=cat,
                bbox=[x, y, w, h], area=w * h, iscrowd=0,
                segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
        name = f'{i:03d}.png'
        Image.fromarray(img).save(osp.join(root, name))
        images.append(dict(id=i + 1, file_name=name, width=size, height=size))
    coco = dict(images=images, annotations=anns,
                categories=[dict(id=1, name='red'), dict(id=2, name='blue')])
    ann_file = osp.join(root, 'ann.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


MASK_RCNN_CFG = '''
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
metainfo = dict(classes=('red', 'blue'))
model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]),
    roi_head=dict(
        bbox_head=dict(num_classes=2), mask_head=dict(num_classes=2)),
    test_cfg=dict(rcnn=dict(score_thr=0.0)))
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))]
dataset = dict(type='CocoDataset', data_root='{root}', ann_file='ann.json',
               data_prefix=dict(img=''), metainfo=metainfo,
               pipeline=pipeline, test_mode=False)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dataset)
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(dataset, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{root}/ann.json', metric=['bbox', 'segm'])
test_evaluator = val_evaluator
'''


def write_config(path: str, template: str, **kwargs) -> str:
    with open(path, 'w') as f:
        f.write(template.format(**kwargs))
    return path
