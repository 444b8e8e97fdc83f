"""Presets under configs/quant and the example configs under configs/."""
import glob
import os.path as osp
import re

import pytest
from mmengine.config import Config

from mmptq.apis import list_presets, load_quant_cfg, resolve_quant_cfg

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'mm*', '**', '*.py'),
                          recursive=True))
#: configs that quantize (file names end with the preset: ..._w4a4.py)
EXAMPLES = [p for p in CONFIGS if re.search(r'_w\d+a\d+\.py$', p)]


def test_presets_are_listed_and_valid():
    names = list_presets()
    for expected in ('w8a8', 'w6a6', 'w4a8', 'w4a4', 'minmax_w8a8',
                     'ema_w8a8', 'percentile_w8a8', 'omse_w8a8',
                     'fqvit_w8a8_attn4'):
        assert expected in names
    for name in names:
        cfg = resolve_quant_cfg(load_quant_cfg(name))
        assert 2 <= cfg['w_bits'] <= 16


@pytest.mark.parametrize('name, w, a', [('w8a8', 8, 8), ('w6a6', 6, 6),
                                        ('w4a8', 4, 8), ('w4a4', 4, 4)])
def test_preset_bits(name, w, a):
    cfg = load_quant_cfg(name)
    assert (cfg['w_bits'], cfg['a_bits']) == (w, a)


def test_baselines_use_their_observer():
    observers = {
        'minmax_w8a8': 'MinMaxObserver',
        'ema_w8a8': 'EMAMinMaxObserver',
        'percentile_w8a8': 'PercentileObserver',
        'omse_w8a8': 'OMSEObserver'
    }
    for name, observer in observers.items():
        assert load_quant_cfg(name)['act']['observer']['type'] == observer


def test_repq_vit_presets():
    for name, bits in (('repq-vit_w4a4', 4), ('repq-vit_w6a6', 6)):
        cfg = resolve_quant_cfg(load_quant_cfg(name))
        assert (cfg['w_bits'], cfg['a_bits']) == (bits, bits)
        assert cfg['transforms'] == [dict(type='RepQReparam')]
        assert cfg['weight']['observer']['type'] == 'PercentileSearchObserver'
        assert cfg['act']['observer']['type'] == 'PercentileSearchObserver'
        assert cfg['attn']['softmax']['type'] == 'LogSqrt2Quantizer'
        assert cfg['overrides'][0]['a_bits'] == 8  # image input
    ablation = resolve_quant_cfg(load_quant_cfg('repq-vit_w4a4_no-reparam'))
    assert ablation['transforms'] == []
    assert ablation['weight'] == resolve_quant_cfg(
        load_quant_cfg('repq-vit_w4a4'))['weight']


def test_preset_path_and_unknown_name(tmp_path):
    path = tmp_path / 'mine.py'
    path.write_text("_base_ = ['%s']\nquant_cfg = dict(a_bits=6)\n" %
                    osp.join(ROOT, 'configs', 'quant', 'w4a4.py'))
    cfg = load_quant_cfg(str(path))
    assert (cfg['w_bits'], cfg['a_bits']) == (4, 6)
    with pytest.raises(ValueError, match=r'unknown quantization preset.*w4a4'):
        load_quant_cfg('w3a3')


@pytest.mark.parametrize('path', EXAMPLES,
                         ids=[osp.basename(p) for p in EXAMPLES])
def test_example_configs(path):
    cfg = Config.fromfile(path)
    assert 'mmptq' in cfg.custom_imports['imports']
    assert cfg.test_cfg['type'] == 'mmptq.QuantTestLoop'
    resolve_quant_cfg(cfg.quant_cfg.to_dict())
    assert cfg.default_scope in ('mmdet', 'mmseg', 'mmpretrain')


FP_CONFIGS = [p for p in CONFIGS if p not in EXAMPLES]


@pytest.mark.parametrize('path', FP_CONFIGS,
                         ids=[osp.basename(p) for p in FP_CONFIGS])
def test_fp_configs_build(path):
    """FP configs mmptq adds for the papers' rows build their model."""
    import importlib

    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    assert registry.MODELS.build(cfg.model) is not None
