"""Presets under configs/quant and the example configs under configs/."""
import copy
import glob
import os.path as osp
import re

import pytest
import torch
from torch import nn
from mmengine.config import Config

from mmptq.apis import list_presets, load_quant_cfg, resolve_quant_cfg

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: the papers' configs (PTQ4SAM's, whose models load SAM and detector
#: checkpoints when built, and PTQ4RIS's, whose LAVT reads a tokenizer
#: directory, have their own tests: test_ptq4sam_configs.py,
#: tests/test_models/test_lavt.py)
CONFIGS = sorted(
    p for p in glob.glob(osp.join(ROOT, 'configs', 'mm*', '**', '*.py'),
                         recursive=True)
    if osp.join('mmdet', 'ptq4sam') not in p
    and osp.join('mmdet', 'ptq4ris') not in p)
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
        # the bits its name states (..._w4a4, ..._w8a8_attn4), through the
        # whole _base_ chain (brecq_w4a4 sets no bits itself)
        w, a = map(int, re.search(r'_?w(\d+)a(\d+)', name).groups())
        assert (cfg['w_bits'], cfg['a_bits']) == (w, a), name
        attn = re.search(r'_attn(\d+)$', name)
        assert cfg['attn']['softmax_bits'] == (
            int(attn.group(1)) if attn else None), name


@pytest.mark.parametrize('name, w, a', [('w8a8', 8, 8), ('w6a6', 6, 6),
                                        ('w4a8', 4, 8), ('w4a4', 4, 4)])
def test_preset_bits(name, w, a):
    cfg = load_quant_cfg(name)
    assert (cfg['w_bits'], cfg['a_bits']) == (w, a)


def changed(base, **changes):
    """The resolved config of ``base`` (a preset name, or None for the
    defaults) with ``changes`` applied; a key ``a__b`` is ``cfg[a][b]``."""
    cfg = copy.deepcopy(dict(resolve_quant_cfg(
        None if base is None else load_quant_cfg(base))))
    for key, value in changes.items():
        *parents, leaf = key.split('__')
        node = cfg
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


MINMAX = dict(type='MinMaxObserver')
QDROP = dict(reconstruction=dict(type='QDropReconstruction'),
             calib__num_samples=1024, calib__batch_size=32)

#: AHCPTQ's rules (configs/quant/ahcptq_w4a4.py)
AHCPTQ_HLUQ = dict(name=r'(.*\.)?(mlp\.lin2|ffn\.layers\.1)',
                   act=dict(type='HLUQuantizer'))
AHCPTQ_CAG = dict(name=r'(.*\.)?(qkv|q_proj|k_proj|v_proj|mlp\.lin1)',
                  act=dict(type='CAGQuantizer', groups=4))

#: what each preset's header comment says it is, as (base, changes): the
#: resolved preset must be exactly its base (None: DEFAULT_QUANT_CFG)
#: with these changes
PRESET_CLAIMS = {
    # "Generic recipe": the defaults, only the bits differ
    'w4a8': (None, dict(w_bits=4, a_bits=8)),
    'w6a6': (None, dict(w_bits=6, a_bits=6)),
    # "8-bit weights and activations ... per-channel min/max weights"
    'w8a8': (None, dict(w_bits=8, a_bits=8, weight__observer=MINMAX)),
    # "weights: int8 symmetric per output channel, min/max; activations:
    # ... the default act quantizer; the softmax of attention: uniform
    # 8 bit, min/max"
    'w8a8_deploy': (None, dict(
        w_bits=8, a_bits=8,
        weight=dict(type='UniformQuantizer', granularity='channel',
                    symmetric=True, observer=MINMAX),
        attn__softmax=dict(type='UniformQuantizer', observer=MINMAX))),
    # "weights: int8 symmetric per output channel, running min/max;
    # activations: uint8 asymmetric per tensor ...; the softmax output
    # (uniform, 8 bits) and the inputs of every LayerNorm; calibration on
    # 1,000 images in 10 batches of 100, ... calib mode 'parallel'"
    'minmax_w8a8': (None, dict(
        w_bits=8, a_bits=8,
        weight=dict(type='UniformQuantizer', granularity='channel',
                    symmetric=True, observer=MINMAX),
        act=dict(type='UniformQuantizer', granularity='tensor',
                 observer=MINMAX),
        norm=dict(type='UniformQuantizer', observer=MINMAX),
        attn__softmax=dict(type='UniformQuantizer', observer=MINMAX),
        calib__num_samples=1000, calib__batch_size=100,
        calib__mode='parallel')),
    # "Otherwise minmax_w8a8.py": only the activation observer changes
    # (activations, LayerNorm inputs, softmax output)
    **{name: ('minmax_w8a8', dict(
        act__observer=obs, norm__observer=obs,
        attn__softmax__observer=obs)) for name, obs in (
            ('ema_w8a8', dict(type='EMAMinMaxObserver', momentum=0.01)),
            ('percentile_w8a8', dict(type='PercentileObserver',
                                     percentile=0.99999, momentum=0.01)),
            ('omse_w8a8', dict(type='OMSEObserver', running_range=True)))},
    # "minmax_w8a8.py plus PTF for the LayerNorm inputs and Log-Int-Softmax
    # (8-bit logits, exp_shift=4, 4-bit output)"
    'fqvit_w8a8_attn4': ('minmax_w8a8', dict(
        norm=dict(type='PTFQuantizer', observer=MINMAX),
        attn__softmax=dict(type='LISQuantizer', input_bits=8, exp_shift=4,
                           observer=MINMAX),
        attn__softmax_bits=4)),
    # "4-bit weights and activations; the input of the first layer ...
    # stays at 8 bits. Otherwise the generic recipe"
    'w4a4': (None, dict(w_bits=4, a_bits=4,
                        overrides=[dict(first_op=True, a_bits=8)])),
    # PTQ4SAM: "BIG ... AGQ ... weights per output channel, asymmetric,
    # MSEGridObserver ... activations per tensor, asymmetric, the mean of
    # the per-batch min / max (AvgMinMaxObserver) ...
    # QDrop ... one image per iteration ... 32 images, one per batch,
    # parallel ... FP: SAM's patch embedding and the mask decoder's
    # output_upscaling, iou_prediction_head and output_hypernetworks_mlps"
    'ptq4sam_w4a4': (None, dict(
        w_bits=4, a_bits=4,
        weight=dict(type='UniformQuantizer', granularity='channel',
                    observer=dict(type='MSEGridObserver')),
        act=dict(type='UniformQuantizer', granularity='tensor',
                 observer=dict(type='AvgMinMaxObserver')),
        attn__softmax=dict(type='AGQQuantizer'),
        transforms=[dict(type='BimodalIntegration')],
        reconstruction=dict(type='QDropReconstruction', batch_size=1),
        calib__num_samples=32, calib__batch_size=1, calib__mode='parallel',
        overrides=[dict(
            name=r'(.*\.)?(patch_embed|output_upscaling|iou_prediction_head'
            r'|output_hypernetworks_mlps)(\..*)?', skip=True)])),
    'ptq4sam_w6a6': ('ptq4sam_w4a4', dict(w_bits=6, a_bits=6)),
    # the ablations: "without AGQ" (the activation quantizer on the
    # softmax output) and "without BIG"
    'ptq4sam_w4a4_agq-only': ('ptq4sam_w4a4', dict(transforms=[])),
    'ptq4sam_w4a4_big-only': ('ptq4sam_w4a4', dict(
        attn__softmax=dict(type='UniformQuantizer', granularity='tensor',
                           observer=dict(type='AvgMinMaxObserver')))),
    # AHCPTQ: "PTQ4SAM's recipe ... with two activation quantizers
    # replaced: HLUQ ... the input of every MLP's second Linear (`mlp.lin2`,
    # `ffn.layers.1`) ... CAG ... the input of every linear projection
    # (`qkv`, `q_proj`, `k_proj`, `v_proj`, `lin1`) ... 4 groups"; the
    # ablations: without CAG, without HLUQ
    **{name: (base, dict(overrides=[
        dict(name=r'(.*\.)?(patch_embed|output_upscaling|iou_prediction_head'
             r'|output_hypernetworks_mlps)(\..*)?', skip=True)] + rules))
       for name, base, rules in (
           ('ahcptq_w4a4', 'ptq4sam_w4a4', [AHCPTQ_HLUQ, AHCPTQ_CAG]),
           ('ahcptq_w4a4_hluq-only', 'ptq4sam_w4a4', [AHCPTQ_HLUQ]),
           ('ahcptq_w4a4_cag-only', 'ptq4sam_w4a4', [AHCPTQ_CAG]))},
    'ahcptq_w6a6': ('ahcptq_w4a4', dict(w_bits=6, a_bits=6)),
    # RepQ-ViT: w4a4 with percentile-searched weights and the
    # reparameterization (per-tensor percentile-searched activations,
    # log-sqrt2 softmax and sequential calibration are the defaults)
    'repq-vit_w4a4': ('w4a4', dict(
        weight__observer=dict(type='PercentileSearchObserver'),
        transforms=[dict(type='RepQReparam')])),
    'repq-vit_w6a6': ('repq-vit_w4a4', dict(w_bits=6, a_bits=6)),
    'repq-vit_w4a4_no-reparam': ('repq-vit_w4a4', dict(transforms=[])),
    # QDrop / BRECQ / PD-Quant: w4a4 then block reconstruction on 1,024
    # calibration images in minibatches of 32
    'qdrop_w4a4': ('w4a4', QDROP),
    'repq-vit_qdrop_w4a4': ('repq-vit_w4a4', QDROP),
    'brecq_w4a4': ('w4a4', dict(
        QDROP, reconstruction=dict(type='BRECQReconstruction'))),
    'pdquant_w4a4': ('qdrop_w4a4', dict(
        reconstruction=dict(type='PDQuantReconstruction'))),
    # APHQ-ViT: "RepQ-ViT's W4A4 recipe ... then block reconstruction as
    # QDrop ... with the average-perturbation-Hessian weighted loss ... on
    # 1,024 calibration images"
    'aphq-vit_w4a4': ('repq-vit_w4a4', dict(
        QDROP, reconstruction=dict(type='APHQReconstruction'))),
    # "aphq-vit_w4a4 ... with its MLP Reconstruction: a DIFFERENT MODEL"
    'aphq-vit_w4a4_mlp-recon': ('aphq-vit_w4a4', dict(transforms=[
        dict(type='APHQMLPReconstruction'), dict(type='RepQReparam')])),
    # "RepQ-ViT's W4A4 recipe ... with the RoI heads (`roi_head.` ...) at
    # 8 bits"
    'repq-vit_w4a4_roi-w8a8': ('repq-vit_w4a4', dict(
        overrides=[dict(first_op=True, a_bits=8),
                   dict(name=r'roi_head\..*', w_bits=8, a_bits=8)])),
    # "aphq-vit_w4a4 (RepQ-ViT W4A4, then APHQ-ViT block reconstruction)
    # with the RoI heads (`roi_head.` ...) at 8 bits"
    'aphq-vit_w4a4_roi-w8a8': ('aphq-vit_w4a4', dict(
        overrides=[dict(first_op=True, a_bits=8),
                   dict(name=r'roi_head\..*', w_bits=8, a_bits=8)])),
    # PTQ4RIS: "the image input of the first op ... at 8 bits ... DRQ ...
    # post-Softmax (attn.softmax) ... post-GELU input of
    # every mmcv FFN's second Linear (`ffn.layers.1`) ... RORQ: the input of
    # every Linear of the text encoder (query / key / value / dense) in up
    # to 10 groups ... weights: per output channel, asymmetric, ...
    # L2.4 shrink search of [min, max] (MSEObserver, 100 candidates) ...
    # other activations: per tensor, asymmetric, ... L2.4 shrink search of
    # [min, max] (MSEObserver) ... 32 samples, one
    # per batch, ... parallel ... no reconstruction"
    'ptq4ris_w4a4': (None, dict(
        w_bits=4, a_bits=4,
        weight=dict(type='UniformQuantizer', granularity='channel',
                    observer=dict(type='MSEObserver', p=2.4)),
        act=dict(type='UniformQuantizer', granularity='tensor',
                 observer=dict(type='MSEObserver', p=2.4)),
        attn__softmax=dict(type='DualRegionQuantizer', region='softmax'),
        calib__num_samples=32, calib__batch_size=1, calib__mode='parallel',
        overrides=[
            dict(first_op=True, a_bits=8),
            dict(name=r'(.*\.)?ffn\.layers\.1',
                 act=dict(type='DualRegionQuantizer', region='gelu')),
            dict(name=r'text_encoder\..*\.(query|key|value|dense)',
                 act=dict(type='OutlierReorderQuantizer', max_groups=10))])),
    # "ptq4ris_w4a4.py ... with W-bit weights and A-bit activations"
    **{f'ptq4ris_w{w}a{a}': ('ptq4ris_w4a4', dict(w_bits=w, a_bits=a))
       for w, a in ((8, 8), (6, 6), (4, 8))},
}


def test_every_preset_has_its_claims():
    assert sorted(PRESET_CLAIMS) == sorted(list_presets())


@pytest.mark.parametrize('name', sorted(PRESET_CLAIMS))
def test_preset_is_what_its_comment_says(name):
    base, changes = PRESET_CLAIMS[name]
    got = dict(resolve_quant_cfg(load_quant_cfg(name)))
    assert got == changed(base, **changes)


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

#: parameters (millions, as the papers round them) of the FP models:
#: iTPN-B / iTPN-L classifiers (iTPN, Tian et al. CVPR 2023, Table 2: 79M,
#: 288M, the whole model); Swin-T / Swin-S (Liu et al. ICCV 2021, Table 1:
#: 28M, 50M with the 768 → 1000 ImageNet head, so the detectors' backbone
#: plus that head). Wrong depths or widths in a config change these.
PUBLISHED_PARAMS_M = {
    'cascade-mask-rcnn_swin-t-p4-w7_fpn_ms-3x_coco.py': ('swin', 28),
    'cascade-mask-rcnn_swin-s-p4-w7_fpn_ms-3x_coco.py': ('swin', 50),
    'itpn-pixel_hivit-base-p16_in1k.py': ('model', 79),
    'itpn-pixel_hivit-large-p16_in1k.py': ('model', 288),
}


def num_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('path', FP_CONFIGS,
                         ids=[osp.basename(p) for p in FP_CONFIGS])
def test_fp_configs_build(path):
    """FP configs mmptq adds for the papers' rows build the papers' models:
    their parameter count is the published one and the parts fit together
    (a shape-only forward on the meta device: neck / head in_channels must
    match what the backbone returns)."""
    import importlib

    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    model = registry.MODELS.build(cfg.model).eval()
    part, published = PUBLISHED_PARAMS_M[osp.basename(path)]
    if part == 'swin':
        embed = model.backbone.num_features[-1]
        count = num_params(model.backbone) + embed * 1000 + 1000
    else:
        count = num_params(model)
    assert round(count / 1e6) == published, count
    model.to('meta')
    x = torch.empty(1, 3, 224, 224, device='meta')
    with torch.no_grad():
        if cfg.default_scope == 'mmdet':  # backbone → FPN: 5 levels
            feats = model.extract_feat(x)
            assert [tuple(f.shape) for f in feats] == [
                (1, cfg.model.neck.out_channels, size, size)
                for size in (56, 28, 14, 7, 4)]
        else:  # backbone → head: ImageNet logits
            out = model(x, mode='tensor')
            assert tuple(out.shape) == (1, cfg.model.head.num_classes)


def test_preset_overrides_add_to_the_configs():
    """``--quant-cfg`` over a config's quant_cfg: the config's override
    rules stay, the preset's follow (later rules win); named (dict) rules
    merge by name, the preset's replacing a same-named one."""
    from mmptq.core.config import merge_quant_cfg
    skip = dict(name=r'head\..*', skip=True)
    first = dict(first_op=True, a_bits=8)
    listed = Config(dict(quant_cfg=dict(overrides=[skip])))
    assert merge_quant_cfg(listed, 'w4a4')['overrides'] == [skip, first]
    named = Config(dict(quant_cfg=dict(overrides=dict(
        head=skip, first_layer=dict(first_op=True, a_bits=6)))))
    assert merge_quant_cfg(named, 'w4a4')['overrides'] == [skip, first]
    # without a preset, a dict of named rules resolves to its values
    assert resolve_quant_cfg(named.quant_cfg.to_dict())['overrides'] == [
        skip, dict(first_op=True, a_bits=6)]


class _FFN(nn.Module):
    """mmcv's FFN layout: layers.0 = Sequential(fc1, GELU), layers.1 =
    fc2."""

    def __init__(self, dim):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU()),
            nn.Linear(2 * dim, dim))

    def forward(self, x):
        return self.layers(x)


class _BertLayer(nn.Module):
    """A BERT layer's Linear names: attention.self.query / key / value,
    attention.output.dense, intermediate.dense, output.dense."""

    def __init__(self, dim):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for key in ('query', 'key', 'value'):
            setattr(self.attention.self, key, nn.Linear(dim, dim))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(dim, dim)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, 2 * dim)
        self.output = nn.Module()
        self.output.dense = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        s = self.attention.self
        q, k, v = s.query(x), s.key(x), s.value(x)
        a = (q @ k.transpose(-2, -1) * q.shape[-1]**-0.5).softmax(-1) @ v
        x = self.norm(x + self.attention.output.dense(a))
        h = nn.functional.gelu(self.intermediate.dense(x))
        return self.norm(x + self.output.dense(h))


class TinyRIS(nn.Module):
    """LAVT's module names in small: `backbone` blocks with attention and
    an mmcv FFN, a BERT-like `text_encoder`, a fusion head."""

    def __init__(self, dim=16):
        super().__init__()
        from toy_models import ExplicitAttention
        self.backbone = nn.Module()
        self.backbone.embed = nn.Linear(12, dim)
        self.backbone.attn = ExplicitAttention(dim)
        self.backbone.ffn = _FFN(dim)
        self.text_encoder = nn.Module()
        self.text_encoder.layer = _BertLayer(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, img, words):
        x = self.backbone.embed(img)
        x = x + self.backbone.attn(x)
        x = x + self.backbone.ffn(x)
        t = self.text_encoder.layer(words)
        return self.head(x * t.mean(1, keepdim=True))


@pytest.mark.parametrize('name', ['ptq4ris_w8a8', 'ptq4ris_w6a6',
                                  'ptq4ris_w4a8', 'ptq4ris_w4a4'])
def test_ptq4ris_presets_quantize_a_ris_toy(name):
    """Each preset puts DRQ on the softmax and on the FFN's post-GELU
    input, RORQ on every text-encoder Linear input, and runs
    calibrate → freeze → restore."""
    from mmptq.apis import quantize_model
    from mmptq.core.restore import quant_meta, restore_quantized
    from mmptq.quantizers import DualRegionQuantizer, OutlierReorderQuantizer

    torch.manual_seed(0)
    model = TinyRIS().eval()
    fresh = copy.deepcopy(model)
    data = [(torch.randn(1, 9, 12), torch.randn(1, 5, 16))
            for _ in range(2)]
    cfg = resolve_quant_cfg(name)
    _, summary = quantize_model(model, cfg, data)
    kinds = {n: type(m).__name__ for n, m in model.named_modules()
             if isinstance(m, (DualRegionQuantizer, OutlierReorderQuantizer))}
    rorq = sorted(n for n, k in kinds.items()
                  if k == 'OutlierReorderQuantizer')
    assert rorq == sorted(
        f'text_encoder.layer.{p}.input_quantizer' for p in (
            'attention.self.query', 'attention.self.key',
            'attention.self.value', 'attention.output.dense',
            'intermediate.dense', 'output.dense'))
    drq = {n: m.region for n, m in model.named_modules()
           if isinstance(m, DualRegionQuantizer)}
    assert drq.pop('backbone.ffn.layers.1.input_quantizer') == 'gelu'
    assert drq and set(drq.values()) == {'softmax'}
    assert all(m.bits == cfg['a_bits'] for m in model.modules()
               if isinstance(m, (DualRegionQuantizer,
                                 OutlierReorderQuantizer)))
    restore_quantized(fresh, quant_meta(summary))
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(*data[0]), model(*data[0]))
