"""The PTQ4SAM presets (configs/quant/ptq4sam_*.py): they resolve, and the
W4A4 one quantizes segment-anything's mask decoder (tiny, random init)
with BIG, AGQ on every softmax and QDrop reconstruction."""
import pytest
import torch
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import TwoWayTransformer

import mmptq  # noqa: F401  (registration)
from mmptq.apis import load_quant_cfg, quantize_model, resolve_quant_cfg

PRESETS = {
    # name: (bits, softmax quantizer, transforms)
    'ptq4sam_w6a6': (6, 'AGQQuantizer', ['BimodalIntegration']),
    'ptq4sam_w4a4': (4, 'AGQQuantizer', ['BimodalIntegration']),
    'ptq4sam_w4a4_big-only': (4, 'UniformQuantizer', ['BimodalIntegration']),
    'ptq4sam_w4a4_agq-only': (4, 'AGQQuantizer', []),
}


@pytest.mark.parametrize('name', list(PRESETS))
def test_presets_resolve(name):
    bits, softmax, transforms = PRESETS[name]
    cfg = resolve_quant_cfg(name)
    assert (cfg['w_bits'], cfg['a_bits']) == (bits, bits)
    assert cfg['attn']['softmax']['type'] == softmax
    assert [t['type'] for t in cfg['transforms']] == transforms
    assert cfg['reconstruction']['type'] == 'QDropReconstruction'
    assert cfg['reconstruction']['batch_size'] == 1
    assert cfg['calib']['num_samples'] == 32
    assert cfg['calib']['batch_size'] == 1
    assert cfg['weight']['observer']['type'] == 'MSEGridObserver'


def mask_decoder():
    torch.manual_seed(0)
    return MaskDecoder(
        transformer_dim=32,
        transformer=TwoWayTransformer(depth=2, embedding_dim=32,
                                      num_heads=2, mlp_dim=64),
        num_multimask_outputs=3, iou_head_depth=2,
        iou_head_hidden_dim=16).eval()


def batches(n=2):
    gen = torch.Generator().manual_seed(0)
    return [
        dict(image_embeddings=torch.randn(1, 32, 4, 4, generator=gen),
             image_pe=torch.randn(1, 32, 4, 4, generator=gen),
             sparse_prompt_embeddings=torch.randn(3, 2, 32, generator=gen),
             dense_prompt_embeddings=torch.randn(3, 32, 4, 4, generator=gen),
             multimask_output=False) for _ in range(n)
    ]


def test_w4a4_quantizes_the_mask_decoder():
    cfg = load_quant_cfg('ptq4sam_w4a4')
    cfg['reconstruction']['iters'] = 2
    model = mask_decoder()
    data = batches()
    with torch.no_grad():
        fp = model(**data[0])[0]
    qmodel, summary = quantize_model(model, cfg, data)
    softmax = [r for r in summary if r['kind'] == 'softmax']
    assert len(softmax) == 7  # 2 layers × 3 attentions + the final one
    for row in softmax:
        assert row['status'] == 'quantized', row
        assert row['operands']['softmax']['quantizer'] == 'AGQQuantizer'
    assert {r['target'].rsplit('.', 1)[-1] for r in summary.transforms
            } == {'k_proj'}
    assert summary.reconstruction
    kept = {r['name'] for r in summary if r['reason'] == 'skipped by override'}
    assert 'output_upscaling.0' in kept and 'iou_prediction_head.layers.0' in kept
    with torch.no_grad():
        out = qmodel(**data[0])[0]
    assert out.shape == fp.shape and torch.isfinite(out).all()
