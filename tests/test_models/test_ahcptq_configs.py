"""configs/mmdet/ptq4sam/*_ahcptq-w{4a4,6a6}.py: AHCPTQ's COCO rows next to
PTQ4SAM's, the FP config's model with the ahcptq preset and the detector
in FP."""
import os.path as osp

import pytest
from mmengine.config import Config

from mmptq.core import load_quant_cfg
from mmptq.core.config import merge_quant_cfg

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))), 'configs', 'mmdet', 'ptq4sam')
DETECTORS = ('faster-rcnn-r50', 'yolox-l', 'dino-4scale-r50')
SKIP_DETECTOR = dict(name=r'detector(\..*)?', skip=True)


@pytest.mark.parametrize('bits', (4, 6))
@pytest.mark.parametrize('det', DETECTORS)
@pytest.mark.parametrize('sam', 'blh')
def test_ahcptq_configs_resolve(sam, det, bits):
    name = f'sam-{sam}_{det}_coco'
    fp = Config.fromfile(osp.join(CONFIGS, f'{name}.py'))
    cfg = Config.fromfile(
        osp.join(CONFIGS, f'{name}_ahcptq-w{bits}a{bits}.py'))
    assert cfg.model == fp.model
    assert cfg.test_cfg.type == 'mmptq.QuantTestLoop'
    resolved = merge_quant_cfg(cfg)
    assert resolved['w_bits'] == resolved['a_bits'] == bits
    assert resolved['calib']['num_samples'] == 32
    assert resolved['calib']['batch_size'] == 1
    preset = load_quant_cfg('ahcptq_w4a4')['overrides']
    for rule in ('sam_fp_parts', 'hluq_post_gelu', 'cag_projections'):
        assert preset[rule] in resolved['overrides'], rule
    assert SKIP_DETECTOR in resolved['overrides']
    assert resolved['transforms'] == [dict(type='BimodalIntegration')]
    assert resolved['attn']['softmax']['type'] == 'AGQQuantizer'
