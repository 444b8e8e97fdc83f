"""Real OpenMMLab configs (random init, image-like inputs) through
quantize_model: every attention quantized, W8A8 close to FP."""
import math

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

from mmengine.config import Config  # noqa: E402

from mmptq.apis.analyze import (build_random_model,  # noqa: E402
                                 quantization_sqnr, synthetic_batch)

W8A8 = Config.fromfile('configs/quant/w8a8.py').quant_cfg.to_dict()

# (config, input size, attention hosts expected, cfg_options)
CONFIGS = [
    ('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', (224, 224), 12),
    ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', (224, 224), 0),
    ('mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
     (128, 128), 8),
    ('mmpretrain::deit/deit-small_4xb256_in1k.py', (112, 112), 12),
    ('mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py', (224, 224),
     12),
    ('mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py',
     (112, 112), 12),
]


@pytest.mark.parametrize('config, size, hosts', CONFIGS,
                         ids=[c[0].split('/')[-1] for c in CONFIGS])
def test_real_config_w8a8(config, size, hosts):
    model, scope = build_random_model(config)
    calib = [synthetic_batch(scope, 1, size, seed=i) for i in range(4)]
    test = synthetic_batch(scope, 2, size, seed=99)
    result = quantization_sqnr(model, scope, W8A8, calib, test)
    sqnr, summary = result.sqnr, result.summary
    # the time is not testable, only a finite number; the peak memory has
    # a real lower bound: the FP model and the copy quantize_model works
    # on are both resident while it runs (RSS on CPU, allocated on CUDA)
    assert isinstance(result.calib_s, float) and math.isfinite(result.calib_s)
    model_mib = sum(t.numel() * t.element_size()
                    for t in model.state_dict().values()) / 2**20
    assert result.peak_mib >= 2 * model_mib, (result.peak_mib, model_mib)
    counts = summary.counts()
    # every attention: Q·Kᵀ, softmax and attn·V (or one SDPA) quantized
    n_attn = counts.get('softmax', {}).get('quantized', 0) + \
        counts.get('sdpa', {}).get('quantized', 0)
    assert n_attn == hosts
    for kind in ('qk', 'softmax', 'av', 'sdpa'):
        assert 'fp' not in counts.get(kind, {}), summary.fp_rows()
    assert counts['conv2d'].get('quantized', 0) + counts.get(
        'linear', {}).get('quantized', 0) > 0
    assert sqnr >= 20.0, f'{config}: W8A8 SQNR {sqnr:.1f} dB'


def test_build_random_model_initialises_without_pretrained():
    """``init_weights()`` runs with the config's own init_cfg (ResNet:
    Kaiming fan_out normal convs), while a ``Pretrained`` entry (a file
    that does not exist) is dropped: inside a list, or alone (then the
    class's default init_cfg, Kaiming as well, applies)."""
    pretrained = dict(type='Pretrained', checkpoint='/nonexistent.pth')
    kaiming = dict(type='Kaiming', layer=['Conv2d'])
    for init_cfg in (pretrained, [kaiming, pretrained]):
        model, _ = build_random_model(
            'mmpretrain::resnet/resnet18_8xb32_in1k.py',
            {'model.backbone.init_cfg': init_cfg})
        conv = model.backbone.conv1.weight  # 64 x 3 x 7 x 7
        fan_out, fan_in = 64 * 7 * 7, 3 * 7 * 7
        # Kaiming fan_out: std sqrt(2 / 3136) = 0.025; PyTorch's default
        # (uniform, a=sqrt(5)): sqrt(1 / (3 * 147)) = 0.048
        assert abs(float(conv.std()) - math.sqrt(2 / fan_out)) < 0.003
        assert abs(float(conv.std()) - math.sqrt(1 / (3 * fan_in))) > 0.015


def test_build_random_model_depends_only_on_the_seed():
    config = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
    first, _ = build_random_model(config)
    torch.randn(100)  # the global generator moves on
    again, _ = build_random_model(config)
    other, _ = build_random_model(config, seed=1)
    a, b, c = (m.backbone.conv1.weight for m in (first, again, other))
    assert torch.equal(a, b) and not torch.equal(a, c)
