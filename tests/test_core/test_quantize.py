"""quantize_model on plain nn.Modules: coverage, accuracy, validation."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmptq.apis import quantize_model, resolve_quant_cfg
from mmptq.nn import MultiheadAttentionAdapter, QuantLinear
from toy_models import ExplicitAttention, TinyCNN, TinyViT


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return 10 * math.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())


def calib(n=4, shape=(4, 3, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


@pytest.fixture(scope='module')
def vit():
    torch.manual_seed(0)
    return TinyViT().eval()


@pytest.fixture(scope='module')
def cnn():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    with torch.no_grad():  # non-trivial BN statistics
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize('name', ['vit', 'cnn'])
def test_w8a8_close_to_fp_and_w4a4_further(name, request):
    model = request.getfixturevalue(name)
    x = calib(1, (8, 3, 32, 32), seed=1)[0]
    with torch.no_grad():
        ref = model(x)
    sqnr = {}
    for bits in (8, 4):
        q, _ = quantize_model(
            copy.deepcopy(model), dict(w_bits=bits, a_bits=bits), calib())
        with torch.no_grad():
            sqnr[bits] = sqnr_db(ref, q(x))
    assert sqnr[8] >= 20.0
    assert sqnr[4] < sqnr[8]


def test_every_op_of_vit_is_quantized(vit):
    model, summary = quantize_model(copy.deepcopy(vit), dict(), calib(2))
    counts = summary.counts()
    assert summary.fp_rows() == []
    # conv + 2×(qkv, proj, fc1, fc2) + mha (q, k, v, out) + head
    assert counts['linear'] == {'quantized': 13}
    assert counts['conv2d'] == {'quantized': 1}
    assert counts['qk'] == counts['softmax'] == counts['av'] == {
        'quantized': 2}  # explicit attention + nn.MultiheadAttention
    assert counts['sdpa'] == {'quantized': 1}
    assert isinstance(model.mha, MultiheadAttentionAdapter)
    assert isinstance(model.blocks[0].attn.qkv, QuantLinear)
    # every quantizer is frozen: no observers, parameters are buffers
    for m in model.modules():
        if hasattr(m, 'observer'):
            assert m.observer is None and m.calibrated
            assert 'scale' in m._buffers


def test_attention_capture_quantizes_the_softmax_output(vit):
    model, _ = quantize_model(
        copy.deepcopy(vit), dict(a_bits=4, w_bits=8), calib(2))
    router = model.blocks[0].attn.attn_quantizer
    assert router.kinds == ['matmul', 'softmax', 'matmul']
    softmax_q, av_site = router.sites[1].quantizer, router.sites[2]
    # the left operand of the attn·V matmul call, as the host produced it
    # (the site's own quantizer of that operand is None: already quantized)
    assert av_site.quantizer_a is None
    seen = []
    av_site.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    with torch.no_grad():
        model(calib(1, seed=3)[0])
    # the value flowing into attn·V lies on the log√2 grid s·2^(-k/2),
    # k ∈ [0, 2^4 − 1], or is 0
    p, = seen
    assert p.shape[-1] == p.shape[-2] and (p >= 0).all()
    k = -2 * torch.log2(p[p > 0] / softmax_q.scale)
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert k.min() >= -1e-4 and k.max() <= 2**4 - 1 + 1e-4


def test_quantizers_off_reproduce_fp(vit):
    """With every quantizer disabled, the rewired model (adapters, SDPA
    decomposition, wrapped layers) computes the FP function."""
    x = calib(1, seed=2)[0]
    with torch.no_grad():
        ref = vit(x)
    model, _ = quantize_model(copy.deepcopy(vit), dict(), calib(1))
    for m in model.modules():
        if hasattr(m, 'observer'):
            m.enabled = False
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5, rtol=1e-5)


def test_mha_adapter_matches_torch():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=False).eval()
    adapter = MultiheadAttentionAdapter(mha).eval()
    q, kv = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, -2:] = True
    mask = torch.randn(5, 7)
    with torch.no_grad():
        ref = mha(q, kv, kv, key_padding_mask=pad.float() * -1e9,
                  attn_mask=mask)
        out = adapter(q, kv, kv, key_padding_mask=pad.float() * -1e9,
                      attn_mask=mask)
    assert torch.allclose(ref[0], out[0], atol=1e-6)
    assert torch.allclose(ref[1], out[1], atol=1e-6)


def test_overrides_skip_and_bits(vit):
    cfg = dict(
        w_bits=4,
        a_bits=4,
        overrides=[
            dict(name=r'patch_embed', a_bits=8, w_bits=8),
            dict(name=r'head', skip=True),
            dict(name=r'blocks\.1\.attn', skip=True),
        ])
    model, summary = quantize_model(copy.deepcopy(vit), cfg, calib(2))
    rows = {r['name']: r for r in summary}
    assert rows['patch_embed']['w_bits'] == 8
    assert rows['patch_embed']['a_bits'] == 8
    assert rows['blocks.0.attn.qkv']['a_bits'] == 4
    assert rows['head']['status'] == 'fp'
    assert type(model.head) is nn.Linear
    assert rows['blocks.1.attn.sdpa0']['status'] == 'fp'
    assert rows['blocks.1.attn.sdpa0']['reason'] == 'skipped by override'


def test_parallel_mode_observes_fp_signal(cnn):
    q_seq, _ = quantize_model(copy.deepcopy(cnn), dict(a_bits=4), calib(2))
    q_par, _ = quantize_model(
        copy.deepcopy(cnn), dict(a_bits=4, calib=dict(mode='parallel')),
        calib(2))
    seq = q_seq.head.input_quantizer.scale
    par = q_par.head.input_quantizer.scale
    # the first layer sees the same (FP) input in both modes ...
    assert torch.equal(q_seq.features[0].input_quantizer.scale,
                       q_par.features[0].input_quantizer.scale)
    # ... the last one does not
    assert not torch.equal(seq, par)


@pytest.mark.parametrize('cfg, message', [
    (dict(w_bits=0), 'out of range'),
    (dict(a_bits=33), 'out of range'),
    (dict(w_bit=4), "did you mean|valid keys: .*w_bits"),
    (dict(act=dict(type='UniformQuantiser')), 'UniformQuantizer'),
    (dict(act=dict(observer=dict(type='MinMaxObs'))), 'MinMaxObserver'),
    (dict(calib=dict(mode='random')), 'sequential'),
    (dict(overrides=[dict(name='(')]), 'not a valid regex'),
    (dict(overrides=[dict(name='head', a_bits=1)]), 'out of range'),
    (dict(transforms=[dict(type='NoSuchTransform')]), 'NoSuchTransform'),
])
def test_bad_quant_cfg_is_a_clear_error(cfg, message, cnn):
    with pytest.raises(ValueError, match=message):
        quantize_model(copy.deepcopy(cnn), cfg, calib(1))


def test_empty_calibration_data_is_an_error(cnn):
    with pytest.raises(ValueError, match='calibration data is empty'):
        quantize_model(copy.deepcopy(cnn), dict(), [])


def test_minimal_cfg_gets_defaults():
    cfg = resolve_quant_cfg(dict(w_bits=8, a_bits=8))
    assert cfg['weight']['granularity'] == 'channel'
    assert cfg['attn']['softmax']['type'] == 'LogSqrt2Quantizer'
    assert cfg['calib']['num_samples'] == 32


def test_nan_in_calibration_names_the_layer(cnn):
    bad = calib(1)
    bad[0][0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match=r'features\.0\.input.*NaN'):
        quantize_model(copy.deepcopy(cnn), dict(), bad)


def test_unmatched_dynamic_attention_raises():
    """A host whose calls differ from the discovery pass is an error."""

    class Dynamic(ExplicitAttention):

        def forward(self, x):
            q, k, v = self.split(x)
            attn = self.softmax(q @ k.transpose(-2, -1))
            out = attn @ v
            if x.shape[1] > 4:  # an extra matmul on long inputs
                out = out @ torch.eye(out.shape[-1])
            return self.merge(out)

    model = Dynamic().eval()
    q, _ = quantize_model(model, dict(), [torch.randn(2, 4, 32)])
    with pytest.raises(RuntimeError, match='discovery pass'):
        q(torch.randn(2, 8, 32))


def test_matmuls_of_a_child_of_the_host_are_the_childs():
    """Discovery gives a call to the innermost module running, so a child
    of an attention host (here one that mixes the heads with a matmul of
    its own, between Q·Kᵀ and the softmax) keeps its calls: the host's
    capture is off while the child runs (before, the child's matmul was
    taken as the host's softmax call: 'discovery pass' error)."""

    class HeadMix(nn.Module):

        def __init__(self, heads):
            super().__init__()
            self.mix = nn.Parameter(torch.eye(heads) + 0.1)

        def forward(self, attn):
            return torch.matmul(self.mix, attn.flatten(2)).view_as(attn)

    class Mixed(ExplicitAttention):

        def __init__(self):
            super().__init__()
            self.head_mix = HeadMix(self.heads)

        def forward(self, x):
            q, k, v = self.split(x)
            attn = self.head_mix(q @ k.transpose(-2, -1))
            return self.merge(self.softmax(attn) @ v)

    model = Mixed().eval()
    x = torch.randn(2, 5, 32)
    q, _ = quantize_model(copy.deepcopy(model), dict(), [x])
    router = q.attn_quantizer
    assert router.kinds == ['matmul', 'softmax', 'matmul']
    assert all(router.active)
    with torch.no_grad():
        out = q(x)
        for m in q.modules():
            if hasattr(m, 'observer'):
                m.enabled = False
        assert torch.allclose(q(x), model(x), atol=1e-5)
    assert not torch.allclose(out, model(x), atol=1e-5)  # was quantized


def test_sdpa_site_equals_torch_sdpa_when_disabled():
    from mmptq.nn import QuantMatMul, QuantSDPA, QuantSoftmax
    site = QuantSDPA(QuantMatMul(None, None), QuantSoftmax(None),
                     QuantMatMul(None, None))
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    mask = torch.rand(5, 5) > 0.3
    mask[:, 0] = True
    for kwargs in (dict(), dict(attn_mask=mask), dict(is_causal=True),
                   dict(scale=0.3)):
        ref = F.scaled_dot_product_attention(q, k, v, **kwargs)
        out = site(F.scaled_dot_product_attention, q, k, v, **kwargs)
        assert torch.allclose(ref, out, atol=1e-6), kwargs


def test_unreached_layer_stays_fp_and_is_reported():
    class Branchy(nn.Module):

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(x) if x.sum() > 1e6 else self.a(x)

    model, summary = quantize_model(Branchy().eval(), dict(),
                                    [torch.randn(2, 4)])
    rows = {r['name']: r for r in summary}
    assert rows['a']['status'] == 'quantized'
    assert rows['b']['status'] == 'fp'
    assert 'not reached' in rows['b']['reason']
    assert not model.b.input_quantizer.enabled
    big = torch.full((2, 4), 1e6)
    assert torch.equal(model.b(big), F.linear(big, model.b.quant_weight(),
                                              model.b.bias))
