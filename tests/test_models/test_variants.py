"""mmptq.models.variants: state-dict variants derived at load time."""
import pytest
import torch

from mmptq.apis.benchmark import demo_models
from mmptq.models.variants import (VARIANTS, apply_variant, register_variant,
                                   split_variant)
from test_box_prompt_sam import batch, image, predict, tiny


def test_signflip_keeps_the_function_and_flips_half_the_keys():
    model = tiny(prompt='gt')
    data = batch(image(3), [[5., 5., 40., 30.], [0., 10., 60., 45.]])
    emb = model.extract_feat(data['inputs'])[0]
    boxes = torch.tensor([[5., 5., 40., 30.], [0., 10., 60., 45.]])
    with torch.no_grad():
        ref, ref_iou = model._decode(emb, boxes)
    base = model.state_dict()
    state = apply_variant('signflip', base)
    assert state is not base and all(  # the base state is unchanged
        torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    attns = [k[:-len('q_proj.weight')] for k in state
             if k.endswith('q_proj.weight')]
    assert len(attns) == 7  # 2 blocks x 3 + the final token-to-image
    for attn in attns:
        for proj in ('q_proj', 'k_proj'):
            sign = (state[f'{attn}{proj}.weight'][:, 0] /
                    base[f'{attn}{proj}.weight'][:, 0]).sign()
            assert (sign < 0).sum() * 2 == len(sign), attn
            assert torch.equal(state[f'{attn}{proj}.bias'],
                               base[f'{attn}{proj}.bias'] * sign)
        assert torch.equal(  # the same channels in q and k
            state[f'{attn}q_proj.weight'][:, 0] / base[f'{attn}q_proj.weight'][:, 0],
            state[f'{attn}k_proj.weight'][:, 0] / base[f'{attn}k_proj.weight'][:, 0])
    assert all(torch.equal(v, base[k]) for k, v in state.items()
               if not k.startswith('mask_decoder.') or '_proj.' not in k
               or 'v_proj' in k or 'out_proj' in k)
    model.load_state_dict(state)
    with torch.no_grad():
        out, iou = model._decode(emb, boxes)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.allclose(iou, ref_iou, atol=1e-6)
    assert torch.equal(predict(model, data).masks,
                       predict(tiny(prompt='gt'), data).masks)


def test_bimodal_keeps_the_function_and_shifts_half_the_keys():
    """A constant added to every key of a query's logits is ignored by the
    softmax: ±m on the k_proj biases, half the channels each way."""
    model = tiny(prompt='gt')
    data = batch(image(3))
    emb = model.extract_feat(data['inputs'])[0]
    boxes = torch.tensor([[5., 5., 40., 30.], [0., 10., 60., 45.]])
    base = model.state_dict()
    state = apply_variant('bimodal', base)
    for key in [k for k in state if k.endswith('k_proj.bias')]:
        shift = state[key] - base[key]
        m = 4 * base[key[:-4] + 'weight'].norm(dim=1).max()
        assert torch.allclose(shift.abs(), m.expand_as(shift))
        assert (shift < 0).sum() * 2 == len(shift)
    changed = {k for k in state if not torch.equal(state[k], base[k])}
    assert changed == {k for k in state if k.endswith('k_proj.bias')}
    with torch.no_grad():
        ref, ref_iou = model._decode(emb, boxes)
        model.load_state_dict(state)
        out, iou = model._decode(emb, boxes)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.allclose(iou, ref_iou, atol=1e-5)


@pytest.mark.parametrize('variant', ['signflip', 'bimodal'])
def test_variants_are_deterministic(variant):
    state = tiny(prompt='gt').state_dict()
    a, b = apply_variant(variant, state), apply_variant(variant, state)
    assert all(torch.equal(a[k], b[k]) for k in state)


def test_names():
    assert split_variant('sam-signflip') == ('sam', 'signflip')
    assert split_variant('mask-rcnn_swin') == ('mask-rcnn_swin', None)
    spec, = demo_models(['deit-signflip'])
    assert (spec.name, spec.variant) == ('deit-signflip', 'signflip')
    assert spec.checkpoint == demo_models(['deit'])[0].checkpoint
    with pytest.raises(ValueError, match='deit-nothing'):
        demo_models(['deit-nothing'])
    with pytest.raises(KeyError, match='signflip'):
        apply_variant('nothing', {})
    with pytest.raises(KeyError, match='already'):
        register_variant('signflip')(lambda s: s)
    with pytest.raises(ValueError, match='no "-"'):
        register_variant('a-b')
    assert 'signflip' in VARIANTS


@pytest.mark.parametrize('variant', ['signflip', 'bimodal'])
def test_variants_need_attentions(variant):
    with pytest.raises(KeyError, match='mask_decoder'):
        apply_variant(variant, {'backbone.weight': torch.ones(2)})
