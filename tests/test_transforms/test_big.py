"""BIG (PTQ4SAM, Lv et al. CVPR 2024): the bimodality test, the
q/k pairs found by tracing, the sign fold keeping Q·Kᵀ, and the
transform inside quantize_model on segment-anything's TwoWayTransformer."""
import copy

import numpy as np
import torch
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn

import mmptq  # noqa: F401  (registration)
from mmptq.apis import quantize_model
from mmptq.core.quantize import find_quantizers
from mmptq.core.restore import quant_meta, restore_quantized
from mmptq.transforms import count_peaks, find_qk_pairs

CFG = dict(w_bits=8, a_bits=8, calib=dict(batch_size=1),
           transforms=[dict(type='BimodalIntegration')])


def test_count_peaks():
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(-3, 1, 5000), rng.normal(3, 1, 5000)])
    assert count_peaks(two) == 2
    assert count_peaks(rng.normal(0, 1, 10000)) == 1
    assert count_peaks(np.abs(two)) == 1
    assert count_peaks(np.full(100, 0.5)) == 1
    # peaks closer than ``distance`` grid points count once
    assert count_peaks(two, distance=128) == 1


def sam_transformer(offset=0.0, seed=0):
    """A tiny TwoWayTransformer (random init); with ``offset``, each key
    projection's channels are pushed to ±offset (half of them each way, in
    random order): bimodal keys."""
    torch.manual_seed(seed)
    model = TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4,
                              mlp_dim=64, attention_downsample_rate=2).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith('k_proj') and offset:
                n = mod.bias.numel()
                sign = (torch.arange(n) % 2) * 2 - 1
                mod.bias.copy_(sign[torch.randperm(n, generator=gen)] * offset)
    data = [(torch.randn(1, 32, 4, 4, generator=gen),
             torch.randn(1, 32, 4, 4, generator=gen),
             torch.randn(1, 5, 32, generator=gen)) for _ in range(2)]
    return model, data


def key_outputs(model, data):
    """Every k_proj's outputs over ``data`` (FP: quantizers off)."""
    for q in find_quantizers(model):
        q.enabled = False
    keys = {}
    hooks = [m.register_forward_hook(
        lambda mod, a, out, n=n: keys.setdefault(n, []).append(out))
        for n, m in model.named_modules() if n.endswith('k_proj')]
    with torch.no_grad():
        outs = [model(*batch) for batch in data]
    for h in hooks:
        h.remove()
    return outs, {n: torch.cat([o.flatten() for o in v])
                  for n, v in keys.items()}


def relative(a, b):
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))


def test_finds_the_q_k_projections_of_sam_attention():
    model, data = sam_transformer()
    pairs, rejected = find_qk_pairs(model, lambda: model(*data[0]))
    names = [f'layers.{i}.{a}' for i in range(2) for a in (
        'self_attn', 'cross_attn_token_to_image', 'cross_attn_image_to_token')
    ] + ['final_attn_token_to_image']
    assert pairs == [(f'{n}.q_proj', f'{n}.k_proj') for n in names]
    assert rejected == []


class Attn(nn.Module):
    """q / k from two Linears; ``mode`` breaks what BIG needs."""

    def __init__(self, mode=''):
        super().__init__()
        self.mode = mode
        self.q, self.k, self.p = nn.Linear(8, 8), nn.Linear(8, 8), \
            nn.Linear(8, 8)

    def forward(self, x):
        q, k = self.q(x) * 0.5, self.k(x)
        if self.mode == 'roll':  # channel c of q meets c+1 of k
            k = k.roll(1, dims=-1)
        logits = q @ k.transpose(-2, -1)
        if self.mode == 'two':  # k meets a second query projection
            logits = logits + self.p(x) @ k.transpose(-2, -1)
        out = logits.softmax(-1) @ x
        return out + k.sum() if self.mode == 'reused' else out


def test_pairs_need_channels_to_meet_one_to_one_and_no_other_use():
    x = torch.randn(2, 5, 8)
    for mode, reason in (('roll', 'channels do not meet'),
                         ('reused', 'also used'), ('two', 'more than one')):
        model = Attn(mode)
        pairs, rejected = find_qk_pairs(model, lambda: model(x))
        assert pairs == [] and all(reason in r[2] for r in rejected)
    # a good pair after a bad one is kept (the bad fold changes its input
    # too, so the pairs are then checked one at a time)
    model = nn.Sequential(Attn('roll'), Attn())
    pairs, rejected = find_qk_pairs(model, lambda: model(x))
    assert pairs == [('1.q', '1.k')]
    assert [r[:2] for r in rejected] == [('0.q', '0.k')]


def test_fold_keeps_fp_output_and_makes_keys_unimodal():
    model, data = sam_transformer(offset=4.0)
    fp = copy.deepcopy(model)
    _, before = key_outputs(fp, data)
    _, summary = quantize_model(model, CFG, data)
    rows = summary.transforms
    assert [r['mode'] for r in rows] == ['folded'] * 7
    assert all(r['peaks'] == 2 and r['peaks_after'] == 1 for r in rows)
    outs, after = key_outputs(model, data)
    with torch.no_grad():
        want = [fp(*batch) for batch in data]
    for got, ref in zip(outs, want):
        assert relative(got, ref) <= 1e-5
    for name in before:
        assert count_peaks(before[name].numpy()) == 2
        assert count_peaks(after[name].numpy()) == 1


def test_no_op_on_unimodal_keys():
    model, data = sam_transformer()
    fp = copy.deepcopy(model)
    _, summary = quantize_model(model, CFG, data)
    assert {r['mode'] for r in summary.transforms} == {'kept'}
    for (name, p), (_, p_fp) in zip(model.named_parameters(),
                                    fp.named_parameters()):
        assert torch.equal(p, p_fp), name


def test_quantized_checkpoint_round_trip():
    model, data = sam_transformer(offset=4.0)
    fresh = copy.deepcopy(model)
    _, summary = quantize_model(model, CFG, data)
    assert summary.transforms[0]['mode'] == 'folded'
    restore_quantized(fresh, quant_meta(summary))
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for got, want in zip(fresh(*data[0]), model(*data[0])):
            assert torch.equal(got, want)
