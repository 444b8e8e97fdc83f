"""Check that built data loads with the real OpenMMLab datasets and that
pycocotools evaluates it, and give dataset config dicts for configs.

The ``*_dataset_cfg`` helpers return plain config dicts (upstream dataset
types, scoped as ``mmdet.`` / ``mmseg.`` / ``mmpretrain.``) that demo configs
and tests can use; :func:`load_sample` builds one and runs one sample
through a minimal pipeline; :func:`coco_self_eval` scores the ground truth
of a COCO json against itself (AP must be 1.0); :func:`ref_self_eval`
scores the ground-truth masks of an ``mnist_ref`` split with mmdet's
``RefSegMetric`` (cIoU = mIoU = 100).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence

from .builders import CLS_METAINFO, DATASETS, DET_METAINFO, SEG_METAINFO
from .minilm import minilm_dir
from .refer import ANN_FILE, IMG_DIR, REF_SPLITS, SPLIT_FILE

DET_PIPELINE = [
    dict(type='mmdet.LoadImageFromFile'),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='mmdet.PackDetInputs'),
]
SEG_PIPELINE = [
    dict(type='mmseg.LoadImageFromFile'),
    dict(type='mmseg.LoadAnnotations'),
    dict(type='mmseg.PackSegInputs'),
]
#: as mmdet's refcoco base: masks only; the sentences and the masks also
#: in the metainfo (``text``: list of str, ``gt_masks``: BitmapMasks)
REF_PIPELINE = [
    dict(type='mmdet.LoadImageFromFile'),
    dict(type='mmdet.LoadAnnotations', with_mask=True, with_bbox=False,
         with_seg=False, with_label=False),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor', 'gt_masks', 'text')),
]
CLS_PIPELINE = [
    dict(type='mmpretrain.LoadImageFromFile'),
    dict(type='mmpretrain.PackInputs'),
]


def det_dataset_cfg(data_root: str = 'data/mnist_det', split: str = 'val',
                    pipeline: Optional[List[dict]] = None, **kwargs) -> dict:
    """An mmdet ``CocoDataset`` config for ``mnist_det`` (classes '0'..'9')."""
    return dict(type='mmdet.CocoDataset', data_root=data_root,
                ann_file=f'annotations/instances_{split}.json',
                data_prefix=dict(img=f'{split}/'),
                metainfo=copy.deepcopy(DET_METAINFO),
                pipeline=copy.deepcopy(pipeline or DET_PIPELINE), **kwargs)


def seg_dataset_cfg(data_root: str = 'data/mnist_seg', split: str = 'val',
                    pipeline: Optional[List[dict]] = None, **kwargs) -> dict:
    """An mmseg ``BaseSegDataset`` config for ``mnist_seg`` (11 classes,
    label 0 = background, kept: ``reduce_zero_label=False``)."""
    return dict(type='mmseg.BaseSegDataset', data_root=data_root,
                data_prefix=dict(img_path=f'img_dir/{split}',
                                 seg_map_path=f'ann_dir/{split}'),
                img_suffix='.png', seg_map_suffix='.png',
                reduce_zero_label=False, metainfo=copy.deepcopy(SEG_METAINFO),
                pipeline=copy.deepcopy(pipeline or SEG_PIPELINE), **kwargs)


def cls_dataset_cfg(data_root: str = 'data/mnist_cls', split: str = 'val',
                    pipeline: Optional[List[dict]] = None,
                    ann_file: bool = True, **kwargs) -> dict:
    """An mmpretrain ``CustomDataset`` config for ``mnist_cls``: with the
    ann file ``meta/<split>.txt`` or (``ann_file=False``) the class folders."""
    cfg = dict(type='mmpretrain.CustomDataset', data_root=data_root,
               data_prefix=split, metainfo=copy.deepcopy(CLS_METAINFO),
               pipeline=copy.deepcopy(pipeline or CLS_PIPELINE), **kwargs)
    if ann_file:
        cfg['ann_file'] = f'meta/{split}.txt'
    return cfg


def ref_dataset_cfg(data_root: str = 'data/mnist_ref', split: str = 'val',
                    pipeline: Optional[List[dict]] = None,
                    text_mode: str = 'original', **kwargs) -> dict:
    """An mmdet ``RefCocoDataset`` config for ``mnist_ref``.

    Args:
        data_root: the ``mnist_ref`` folder.
        split: 'train', 'val', 'testA' or 'testB'.
        pipeline: the pipeline (default :data:`REF_PIPELINE`).
        text_mode: RefCocoDataset's: 'original' (every sentence, each with
            its ref's mask), 'select_first', 'random' (one per ref) or
            'concat'.
        **kwargs: more RefCocoDataset / BaseDataset arguments.
    """
    return dict(type='mmdet.RefCocoDataset', data_root=data_root,
                ann_file=ANN_FILE, split_file=SPLIT_FILE,
                data_prefix=dict(img_path=f'{IMG_DIR}/'), split=split,
                text_mode=text_mode,
                pipeline=copy.deepcopy(pipeline or REF_PIPELINE), **kwargs)


_CFG_FNS = {'mnist_det': det_dataset_cfg, 'mnist_seg': seg_dataset_cfg,
            'mnist_cls': cls_dataset_cfg, 'mnist_ref': ref_dataset_cfg}


def build_dataset(cfg: dict):
    """Build a scoped (``mmdet.`` / ``mmseg.`` / ``mmpretrain.``) dataset
    config with its own package's registry."""
    cfg = copy.deepcopy(cfg)
    scope, name = cfg.pop('type').split('.', 1)
    with contextlib.redirect_stdout(io.StringIO()):
        if scope == 'mmdet':
            import mmdet.datasets as mod
        elif scope == 'mmseg':
            import mmseg.datasets as mod
        elif scope == 'mmpretrain':
            import mmpretrain.datasets as mod
        else:
            raise ValueError(f'unknown scope {scope!r}')
        return getattr(mod, name)(**cfg)


def load_sample(name: str, data_root: str, split: str = 'val',
                index: int = 0, **kwargs):
    """Build the upstream dataset for ``name`` ('mnist_det', 'mnist_seg',
    'mnist_cls', 'mnist_ref') under ``data_root`` (the dataset folder) and return
    ``(dataset, dataset[index])`` through the minimal pipeline."""
    ds = build_dataset(_CFG_FNS[name](data_root, split, **kwargs))
    return ds, ds[index]


def coco_eval(ann_file: str, detections: List[dict],
              iou_types: Sequence[str] = ('bbox', 'segm'),
              quiet: bool = True) -> Dict[str, float]:
    """pycocotools COCOeval of ``detections`` (COCO result dicts with
    ``bbox`` and/or ``segmentation``) against ``ann_file``: AP@[.5:.95] per
    IoU type."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    sink = contextlib.redirect_stdout(io.StringIO()) if quiet else \
        contextlib.nullcontext()
    with sink:
        gt = COCO(ann_file)
        stats = {}
        for iou_type in iou_types:
            dt = gt.loadRes(copy.deepcopy(detections))
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats[iou_type] = float(ev.stats[0])
    return stats


def gt_as_detections(ann_file: str) -> List[dict]:
    """The ground truth of ``ann_file`` as COCO results with score 1."""
    with open(ann_file) as f:
        anns = json.load(f)['annotations']
    return [dict(image_id=a['image_id'], category_id=a['category_id'],
                 bbox=list(a['bbox']), segmentation=a['segmentation'],
                 score=1.0) for a in anns]


def coco_self_eval(ann_file: str, iou_types: Sequence[str] = ('bbox', 'segm'),
                   quiet: bool = True) -> Dict[str, float]:
    """COCOeval of the ground truth of ``ann_file`` used as detections
    (score 1): AP@[.5:.95] per IoU type, which must be 1.0."""
    return coco_eval(ann_file, gt_as_detections(ann_file), iou_types, quiet)


def ref_seg_eval(dataset, predict: Optional[Callable] = None
                 ) -> Dict[str, float]:
    """mmdet's ``RefSegMetric`` (cIoU, mIoU in percent) over every sample of
    a RefCocoDataset whose pipeline packs ``gt_masks`` in the metainfo.

    Args:
        dataset: the built dataset.
        predict: ``predict(data_sample) -> (N, H, W) bool tensor``, one mask
            per sentence of ``data_sample.text``; None: the ground truth.
    """
    import torch
    with contextlib.redirect_stdout(io.StringIO()):
        from mmdet.evaluation import RefSegMetric
    metric = RefSegMetric(metric=['cIoU', 'mIoU'])
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        gt = sample.gt_masks
        masks = predict(sample) if predict is not None else \
            gt.to_tensor(torch.bool, 'cpu')
        if len(masks) != len(sample.text):
            raise ValueError(f'sample {i}: {len(masks)} masks for '
                             f'{len(sample.text)} sentences')
        metric.process({}, [dict(pred_instances=dict(masks=masks),
                                 gt_masks=gt)])
    return {k: float(v) for k, v in metric.evaluate(len(dataset)).items()}


def ref_self_eval(data_root: str, split: str = 'val',
                  text_mode: str = 'original') -> Dict[str, float]:
    """``RefSegMetric`` of the ground-truth masks of one ``mnist_ref``
    split used as predictions (cIoU = mIoU = 100), with the split's
    images, refs and sentences counted.

    Args:
        data_root: the ``mnist_ref`` folder.
        split: 'train', 'val', 'testA' or 'testB'.
        text_mode: RefCocoDataset's ``text_mode``.
    """
    ds = build_dataset(ref_dataset_cfg(data_root, split, text_mode=text_mode))
    out = ref_seg_eval(ds)
    out.update(images=len(ds), sentences=sum(len(ds.get_data_info(i)['text'])
                                              for i in range(len(ds))))
    return out


def check_all(root: str = 'data',
              datasets: Sequence[str] = DATASETS) -> Dict[str, dict]:
    """Load one sample of each built dataset under ``root`` with the upstream
    dataset classes (every split) and evaluate the ground truth: COCOeval on
    the mnist_det val json (AP 1.0), RefSegMetric on every mnist_ref split
    (cIoU = mIoU = 100; and the MiniLM folder is complete). Returns a small
    report; raises on any failure.

    Args:
        root: the data root.
        datasets: which datasets to check.
    """
    report = {}
    for name in datasets:
        path = osp.join(root, name)
        rep = {}
        if name == 'mnist_ref':
            for split in REF_SPLITS:
                rep[split] = ref_self_eval(path, split)
                if min(rep[split]['cIoU'], rep[split]['mIoU']) < 100 - 1e-6:
                    raise AssertionError(f'mnist_ref {split}: ground truth '
                                         f'scores {rep[split]}')
            rep['text_encoder'] = minilm_dir(root, unpack=False)
            report[name] = rep
            continue
        for split in ('train', 'val'):
            ds, sample = load_sample(name, path, split)
            rep[split] = len(ds)
        if name == 'mnist_det':
            ann = osp.join(path, 'annotations', 'instances_val.json')
            rep['gt_self_ap'] = coco_self_eval(ann)
            with open(ann) as f:
                rep['val_instances'] = len(json.load(f)['annotations'])
        report[name] = rep
    return report
