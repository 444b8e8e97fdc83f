"""configs/mmdet/ptq4sam: SAM-B/L/H x {Faster R-CNN, YOLOX-L, DINO} box
prompts on COCO val2017, FP and PTQ4SAM W6A6 / W4A4."""
import os.path as osp
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import DefaultScope
from segment_anything import (build_sam_vit_b, build_sam_vit_h,
                              build_sam_vit_l)

from mmptq.core import load_quant_cfg
from mmptq.core.config import merge_quant_cfg
from mmptq.models import BoxPromptSAM

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs')
DETECTORS = dict(
    [('faster-rcnn-r50', ('FasterRCNN', 'faster_rcnn_r50_fpn_1x_coco')),
     ('yolox-l', ('YOLOX', 'yolox_l_8x8_300e_coco')),
     ('dino-4scale-r50', ('DINO', 'dino-4scale_r50_8xb2-12e_coco'))])
SAMS = dict(b='sam_vit_b_01ec64', l='sam_vit_l_0b3195', h='sam_vit_h_4b8939')
BITS = dict(w6a6=6, w4a4=4)
SKIP_DETECTOR = dict(name=r'detector(\..*)?', skip=True)
SAM_FP_PARTS = load_quant_cfg('ptq4sam_w4a4')['overrides']['sam_fp_parts']


@pytest.fixture(scope='module')
def config_dir():
    return Path(CONFIGS) / 'mmdet' / 'ptq4sam'


def load(config_dir, name: str) -> Config:
    return Config.fromfile(str(config_dir / f'{name}.py'))


@pytest.mark.parametrize('det', DETECTORS)
@pytest.mark.parametrize('sam', SAMS)
def test_configs_resolve(config_dir, sam, det):
    name = f'sam-{sam}_{det}_coco'
    cfg = load(config_dir, name)
    model = cfg.model
    assert model.type == 'mmptq.BoxPromptSAM'
    assert model.sam_variant == f'vit_{sam}'
    assert model.sam_checkpoint.endswith(f'/{SAMS[sam]}.pth')
    det_type, det_ckpt = DETECTORS[det]
    assert model.detector.type == det_type
    assert osp.basename(model.detector_checkpoint).startswith(det_ckpt)
    assert cfg.test_evaluator.metric == ['bbox', 'segm']
    assert cfg.test_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.test_dataloader.dataset.ann_file.endswith(
        'instances_val2017.json')
    # the model gets the original image: no resize in the data pipeline
    types = [t.type for t in cfg.test_dataloader.dataset.pipeline]
    assert 'Resize' not in types and 'Resize' in [
        t.type for t in model.detector_pipeline]
    assert 'quant_cfg' not in cfg
    for bits, n in BITS.items():
        qcfg = load(config_dir, f'{name}_ptq4sam-{bits}')
        assert qcfg.model == model and qcfg.test_cfg.type == \
            'mmptq.QuantTestLoop'
        resolved = merge_quant_cfg(qcfg)
        assert resolved['w_bits'] == resolved['a_bits'] == n
        assert resolved['calib']['num_samples'] == 32
        assert resolved['calib']['batch_size'] == 1
        # the config's rule is added to the preset's (named overrides
        # merge), not put in its place
        assert SKIP_DETECTOR in resolved['overrides']
        assert SAM_FP_PARTS in resolved['overrides']


def tiny_sam(cfg: Config) -> dict:
    """The config's model with a small SAM, no checkpoints and the
    detector's resize to 256 pixels (DINO needs 900 tokens)."""
    pipeline = [dict(t, scale=(256, 256)) if t.type == 'Resize' else t
                for t in cfg.model.detector_pipeline]
    return dict(
        cfg.model, sam_checkpoint=None, detector_checkpoint=None,
        detector_pipeline=pipeline,
        image_encoder=dict(embed_dim=32, depth=1, num_heads=1, img_size=64,
                           patch_size=16, window_size=0,
                           global_attn_indexes=(0, )),
        mask_decoder=dict(depth=1, mlp_dim=32, num_heads=1,
                          iou_head_hidden_dim=16),
        prompt_embed_dim=16)


@pytest.mark.parametrize('det', DETECTORS)
def test_configs_build_and_predict(config_dir, det):
    """Each detector config builds inside BoxPromptSAM from mmdet's registry
    (SAM shrunk, random weights) and one image runs through it."""
    cfg = load(config_dir, f'sam-b_{det}_coco')
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):  # as mmdet's Runner
        model = MODELS.build(tiny_sam(cfg)).eval()
    assert isinstance(model, BoxPromptSAM)
    img = np.random.RandomState(0).randint(0, 256, (48, 64, 3),
                                           dtype=np.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(48, 64),
                                         ori_shape=(48, 64)))
    with torch.no_grad():
        pred = model.test_step(dict(
            inputs=[torch.from_numpy(img).permute(2, 0, 1)],
            data_samples=[sample]))[0].pred_instances
    assert pred.masks.shape == (len(pred.bboxes), 48, 64)
    assert len(pred.scores) == len(pred.labels) == len(pred.bboxes)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('sam,builder', [('b', build_sam_vit_b),
                                         ('l', build_sam_vit_l),
                                         ('h', build_sam_vit_h)])
def test_sam_sizes(config_dir, sam, builder):
    """SAM of each config has segment-anything's parameters (counted on the
    meta device: nothing is allocated)."""
    cfg = load(config_dir, f'sam-{sam}_faster-rcnn-r50_coco')
    with torch.device('meta'):
        model = BoxPromptSAM(prompt='gt', sam_variant=cfg.model.sam_variant)
        ref = builder(checkpoint=None)
    assert num_params(model) == num_params(ref)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}
