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


def _demo_model_and_batch(name, images=2):
    """The demo model ``name`` with its FP weights and a batch of its first
    test images through its data preprocessor (data/ built by make data)."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, MODELS, init_default_scope

    from mmptq.apis.runner_setup import load_config
    from mmptq.engine.checkpoint import load_checkpoint_file
    spec, = demo_models([name])
    cfg = load_config(spec.config)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model).eval()
    state = load_checkpoint_file(spec.checkpoint)['state_dict']
    model.load_state_dict(state)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    data = model.data_preprocessor(
        pseudo_collate([dataset[i] for i in range(images)]), False)
    return model, state, data


@pytest.mark.parametrize('name', ['deit', 'mask-rcnn_swin'])
def test_outlier_keeps_the_function_on_real_images(name):
    """γ, β of each LayerNorm feeding Linear layers only scaled by
    10^U(-1, 1) per channel, the Linear's columns by the inverse: the
    features (the classifier's logits, the detector's FPN levels and its
    predictions) agree to 1e-5 on the first test images, while the
    post-LN channel ranges now spread over up to two decades."""
    from mmptq.models.variants import ln_linear_pairs
    model, base, data = _demo_model_and_batch(name)
    state = apply_variant('outlier', base)
    pairs = ln_linear_pairs(base)
    assert len(pairs) == 2 * (4 if name == 'deit' else 8)  # 2 per block
    for norm, linear in pairs:
        s = state[f'{norm}.weight'] / base[f'{norm}.weight']
        assert torch.allclose(state[f"{norm}.bias"], base[f"{norm}.bias"] * s,
                              rtol=1e-5, atol=1e-7)
        assert torch.allclose(state[f'{linear}.weight'],
                              base[f'{linear}.weight'] / s, rtol=1e-5)
        assert s.min() >= 0.1 - 1e-6 and s.max() <= 10 + 1e-5
        assert s.max() / s.min() > 10  # spread, not one common factor
    touched = {f'{n}.{p}' for n, _ in pairs for p in ('weight', 'bias')}
    touched |= {f'{lin}.weight' for _, lin in pairs}
    assert all(torch.equal(v, base[k]) for k, v in state.items()
               if k not in touched)

    def outputs():
        with torch.no_grad():
            if name == 'deit':
                return [model(data['inputs'], mode='tensor')]
            feats = list(model.extract_feat(data['inputs']))
            preds = model.predict(data['inputs'], data['data_samples'])
            return feats + [p.pred_instances.bboxes for p in preds]

    ref = outputs()
    model.load_state_dict(state)
    out = outputs()
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * max(a.abs().max(), 1), name


def test_outlier_is_deterministic_and_needs_pairs():
    state = {'b.0.ln1.weight': torch.ones(4), 'b.0.ln1.bias': torch.ones(4),
             'b.0.attn.qkv.weight': torch.ones(12, 4)}
    a, b = apply_variant('outlier', state), apply_variant('outlier', state)
    assert all(torch.equal(a[k], b[k]) for k in state)
    assert not torch.equal(a['b.0.ln1.weight'], state['b.0.ln1.weight'])
    assert split_variant('mask-rcnn_swin-outlier') == ('mask-rcnn_swin',
                                                       'outlier')
    with pytest.raises(KeyError, match='LayerNorm'):
        apply_variant('outlier', {'backbone.weight': torch.ones(2)})


def test_model_variant_option():
    from mmptq.tools.benchmark import main, parse_args
    args = parse_args(['--model', 'a.py', 'a.pth', '--variant', 'outlier',
                       '--quant-cfg', 'w4a4'])
    assert args.variant == 'outlier'
    with pytest.raises(ValueError, match="unknown --variant 'nothing'"):
        main(['--model', 'a.py', 'a.pth', '--variant', 'nothing',
              '--quant-cfg', 'w4a4'])
