"""Tiny datasets written by the tests, configs that use them, and helpers
to run mmptq's tools as subprocesses.

The config templates are ``str.format`` templates: ``{root}`` is the data
directory; literal braces are doubled.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys
from typing import List

import numpy as np
from PIL import Image

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


# --------------------------------------------------------------- datasets
def make_tiny_coco(root: str, num_images: int = 6, size: int = 64,
                   seed: int = 0) -> str:
    """Images with 1-2 filled rectangles of 2 classes and a COCO json with
    boxes and polygon masks; the same file serves as train and val."""
    os.makedirs(root, exist_ok=True)
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


SEG_COLORS = ((30, 30, 30), (220, 40, 40), (40, 40, 220))


def make_tiny_seg(root: str, num_images: int = 4, size: int = 64,
                  seed: int = 0) -> str:
    """mmseg's folder format: ``img_dir/NNN.png`` (RGB) and
    ``ann_dir/NNN.png`` (class index per pixel) with 3 classes (background,
    red and blue rectangles); the same folders serve as train and val."""
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'img_dir'), exist_ok=True)
    os.makedirs(osp.join(root, 'ann_dir'), exist_ok=True)
    for i in range(num_images):
        seg = np.zeros((size, size), np.uint8)
        for cls in (1, 2):
            w, h = (int(v) for v in rng.integers(12, 28, size=2))
            x, y = (int(v) for v in rng.integers(0, size - 28, size=2))
            seg[y:y + h, x:x + w] = cls
        img = np.asarray(SEG_COLORS, np.uint8)[seg]
        noise = rng.integers(0, 30, size=img.shape)
        img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(osp.join(root, 'img_dir', f'{i:03d}.png'))
        Image.fromarray(seg).save(osp.join(root, 'ann_dir', f'{i:03d}.png'))
    return root


def make_tiny_cls(root: str, classes=('red', 'blue'), per_class: int = 4,
                  size: int = 32, seed: int = 0) -> str:
    """ImageNet-style folders ``root/<class>/NNN.png``: noisy images whose
    dominant colour is the class."""
    rng = np.random.default_rng(seed)
    colors = dict(red=(200, 40, 40), blue=(40, 40, 200))
    for c, name in enumerate(classes):
        os.makedirs(osp.join(root, name), exist_ok=True)
        base = np.asarray(colors.get(name, (40 + 80 * c, 120, 120)))
        for i in range(per_class):
            img = base + rng.integers(-40, 40, size=(size, size, 3))
            img = np.clip(img, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(osp.join(root, name, f'{i:03d}.png'))
    return root


# ---------------------------------------------------------------- configs
# Mask R-CNN from the real mmdet config, shrunk: ResNet-18 at a quarter of
# the width, 32-channel FPN and heads, few proposals and detections.
MASK_RCNN_CFG = '''
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
metainfo = dict(classes=('red', 'blue'))
ch = 32
model = dict(
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=ch),
    rpn_head=dict(in_channels=ch, feat_channels=ch),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=ch),
        bbox_head=dict(in_channels=ch, fc_out_channels=64, num_classes=2),
        mask_roi_extractor=dict(out_channels=ch),
        mask_head=dict(in_channels=ch, conv_out_channels=ch, num_classes=2)),
    test_cfg=dict(
        rpn=dict(nms_pre=200, max_per_img=50),
        rcnn=dict(score_thr=0.0, max_per_img=20)))
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

# SegFormer (MiT-B0) from the real mmseg config: one block per stage, a
# 64-channel head, 3 classes, 64x64 inputs, plain BN (no SyncBN on CPU).
SEGFORMER_CFG = '''
_base_ = 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(num_layers=[1, 1, 1, 1], init_cfg=None),
    decode_head=dict(num_classes=3, channels=64,
                     norm_cfg=dict(type='BN', requires_grad=True)))
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')]
dataset = dict(
    _delete_=True,
    type='BaseSegDataset', data_root='{root}',
    data_prefix=dict(img_path='img_dir', seg_map_path='ann_dir'),
    img_suffix='.png', seg_map_suffix='.png',
    metainfo=dict(classes=('background', 'red', 'blue'),
                  palette=[[30, 30, 30], [220, 40, 40], [40, 40, 220]]),
    pipeline=pipeline)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dataset)
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(dataset, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
'''

# DeiT from the real mmpretrain config: a 2-layer, 64-wide ViT on 32x32
# inputs (8x8 patches), 2 classes, top-1 accuracy.
DEIT_CFG = '''
_base_ = 'mmpretrain::deit/deit-tiny_4xb256_in1k.py'
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
model = dict(
    data_preprocessor=dict(num_classes=2),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=64, num_layers=2, num_heads=2,
                  feedforward_channels=128),
        img_size=32, patch_size=8, init_cfg=None),
    head=dict(num_classes=2, in_channels=64),
    init_cfg=None,
    train_cfg=None)
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(32, 32)),
    dict(type='PackInputs')]
dataset = dict(_delete_=True, type='CustomDataset', data_root='{root}',
               pipeline=pipeline)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dataset)
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dataset)
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
'''


def write_config(path: str, template: str, **kwargs) -> str:
    with open(path, 'w') as f:
        f.write(template.format(**kwargs))
    return path


# ------------------------------------------------------------ checkpoints
def save_fp_checkpoint(config: str, path: str, seed: int = 0,
                       cfg_options: dict = None) -> str:
    """Build the model of ``config`` with the registry (random weights,
    seeded) and save ``dict(state_dict=..., meta={})`` to ``path``."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return path


# ------------------------------------------------------------------ tools
def run_tool(tool: str, *args: str, timeout: float = 300
             ) -> subprocess.CompletedProcess:
    """``python tools/<tool>.py args...`` from the repository root; the
    result has ``returncode``, ``stdout``, ``stderr`` and ``output``
    (both streams together)."""
    cmd = [sys.executable, osp.join('tools', f'{tool}.py'), *map(str, args)]
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2')
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)
    proc.output = proc.stdout + proc.stderr
    return proc


def describe(proc: subprocess.CompletedProcess, tail: int = 3000) -> str:
    """The end of a tool's output, for assertion messages."""
    return (f'{" ".join(proc.args)} exited {proc.returncode}:\n'
            f'{proc.output[-tail:]}')


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The tool succeeded (else: its output in the assertion message)."""
    assert proc.returncode == 0, describe(proc)
    return proc


def metrics_json(work_dir: str) -> dict:
    """The metrics mmengine's logger writes for a test run."""
    files = glob.glob(osp.join(work_dir, '*', '[0-9]*_[0-9]*.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        metrics = json.load(f)
    return {k: v for k, v in metrics.items() if k not in ('time', 'data_time')}


def results(work_dir: str) -> dict:
    with open(osp.join(work_dir, 'mmptq_results.json')) as f:
        return json.load(f)


def quantized_kinds(summary: List[dict]) -> dict:
    """{kind: number of quantized rows} of a results summary."""
    out: dict = {}
    for row in summary:
        if row['status'] == 'quantized':
            out[row['kind']] = out.get(row['kind'], 0) + 1
    return out


# ------------------------------------------------------------ predictions
def fp_predictions(config: str, checkpoint: str) -> List[dict]:
    """The FP model of ``config`` with ``checkpoint`` run in this process
    over the config's test dataloader (``model.test_step`` per batch, as
    mmengine's TestLoop does, without mmptq's loop or tools): one dict per
    sample, as ``--out`` dumps them."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import Runner

    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    model.load_state_dict(state['state_dict'], strict=True)
    model.eval()
    preds = []
    with torch.no_grad():
        for batch in Runner.build_dataloader(cfg.test_dataloader):
            preds += [s.to_dict() for s in model.test_step(batch)]
    return preds


def seg_metrics(preds: List[dict], num_classes: int,
                ignore_index: int = 255) -> dict:
    """aAcc, mIoU and mAcc (percent, 2 decimals) of semantic segmentation
    predictions, by the definitions of mmseg's IoUMetric: pixel counts
    summed over the images, then per class IoU = |P ∩ G| / |P ∪ G| and
    Acc = |P ∩ G| / |G|, averaged over the classes present."""
    inter, pred_area, label_area = (np.zeros(num_classes) for _ in range(3))
    for sample in preds:
        pred = np.asarray(sample['pred_sem_seg']['data']).reshape(-1)
        label = np.asarray(sample['gt_sem_seg']['data']).reshape(-1)
        keep = label != ignore_index
        pred, label = pred[keep], label[keep]
        bins = np.arange(num_classes + 1)
        inter += np.histogram(pred[pred == label], bins)[0]
        pred_area += np.histogram(pred, bins)[0]
        label_area += np.histogram(label, bins)[0]
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = inter / (pred_area + label_area - inter)
        acc = inter / label_area
    return dict(aAcc=round(100 * inter.sum() / label_area.sum(), 2),
                mIoU=round(100 * np.nanmean(iou), 2),
                mAcc=round(100 * np.nanmean(acc), 2))


def top1(preds: List[dict]) -> float:
    """Top-1 accuracy (percent) of classification predictions."""
    hits = [int(np.argmax(np.asarray(s['pred_score']))) ==
            int(np.asarray(s['gt_label']).reshape(-1)[0]) for s in preds]
    return 100 * sum(hits) / len(hits)


# ------------------------------------------------ upstream tools, RTMDet
# RTMDet-tiny from the real mmdet config (CSPNeXt, its EMAHook with
# ExpMomentumEMA and update_buffers, PipelineSwitchHook), random init (no
# pretrained backbone download), 2 classes, 64x64 inputs, every score kept
# so that a random model still predicts boxes.
RTMDET_TINY_CFG = '''
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'
custom_imports = dict(imports=['mmptq'], allow_failed_imports=False)
metainfo = dict(classes=('red', 'blue'))
model = dict(
    backbone=dict(init_cfg=None),
    bbox_head=dict(num_classes=2),
    test_cfg=dict(nms_pre=100, max_per_img=20, score_thr=0.0))
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='Pad', size=(64, 64), pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))]
dataset = dict(type='CocoDataset', data_root='{root}', ann_file='ann.json',
               data_prefix=dict(img=''), metainfo=metainfo,
               pipeline=pipeline, test_mode=True)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dataset)
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dataset)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{root}/ann.json', metric='bbox',
                     proposal_nums=(100, 1, 10))
test_evaluator = val_evaluator
'''


def save_init_checkpoint(config: str, path: str, seed: int = 0) -> str:
    """As ``save_fp_checkpoint``, with the model's ``init_weights()`` run
    (its initializers: e.g. RTMDet's prior-probability classifier bias,
    without which a random RTMDet predicts no box)."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return path


def upstream_tool(package: str, tool: str = 'test') -> str:
    """The path of ``package``'s own ``tools/<tool>.py`` (shipped in its
    ``.mim``); empty if it is not installed."""
    import importlib
    root = osp.dirname(importlib.import_module(package).__file__)
    path = osp.join(root, '.mim', 'tools', f'{tool}.py')
    return path if osp.isfile(path) else ''


def run_upstream(package: str, *args: str, tool: str = 'test',
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <package>/.mim/tools/<tool>.py args...`` from the
    repository root, as ``run_tool``."""
    path = upstream_tool(package, tool)
    assert path, f"{package}'s tools/{tool}.py is not installed"
    cmd = [sys.executable, path, *map(str, args)]
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2')
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)
    proc.output = proc.stdout + proc.stderr
    return proc
