"""FQ-ViT / PTQ-for-iTPN: the observer study's ranges against their
formulas, the Power-of-Two Factor against a brute-force search, Log-Int-
Softmax against I-BERT's integer exp and log2 rounding written out again,
the LayerNorm input wrapping, the presets and a HiViT model.

FQ-ViT's activation quantizer (uint8, asymmetric, per tensor):
s = (max − min) / 255, z = −round(min / s) (min ≤ 0 ≤ max here)."""
import copy
import math
from os import path as osp

import pytest
import torch
from torch import nn

import mmptq  # noqa: F401  (registration)
from mmptq.apis import load_quant_cfg, quantize_model, resolve_quant_cfg
from mmptq.core.restore import quant_meta, restore_quantized
from mmptq.nn import QuantLayerNorm
from mmptq.quantizers import (LISQuantizer, PTFQuantizer, UniformQuantizer,
                              int_exp, log_int_softmax)

from helpers import calibrate
from toy_models import TinyViT

STUDY = ['minmax_w8a8', 'ema_w8a8', 'percentile_w8a8', 'omse_w8a8']


def fqvit_qparams(lo: float, hi: float):
    """FQ-ViT's uint8 asymmetric (scale, zero-point), float32 like torch."""
    s = (torch.tensor(hi) - torch.tensor(lo)) / 255
    return s, torch.clamp(-torch.round(torch.tensor(lo) / s), 0, 255)


def assert_qparams(q, lo, hi):
    s, z = fqvit_qparams(lo, hi)
    torch.testing.assert_close(q.scale, s.reshape(1), rtol=1e-6, atol=0)
    assert q.zero_point.tolist() == [z.item()]


def act_quantizer(preset: str) -> UniformQuantizer:
    cfg = resolve_quant_cfg(load_quant_cfg(preset))
    return UniformQuantizer(bits=cfg['a_bits'],
                            **{k: v for k, v in cfg['act'].items()
                               if k != 'type'})


BATCHES = [torch.tensor([[-1.0, 0.5, 2.0, 0.0]]),
           torch.tensor([[-3.0, 5.0, 1.0, 0.25]]),
           torch.tensor([[-2.0, 1.0, 0.5, -0.5]])]


# ---------------------------------------------------------------------------
# the four observers of the study, as the presets build them
# ---------------------------------------------------------------------------
def test_minmax_preset_range():
    q = calibrate(act_quantizer('minmax_w8a8'), *BATCHES)
    assert_qparams(q, -3.0, 5.0)


def test_ema_preset_range():
    q = calibrate(act_quantizer('ema_w8a8'), *BATCHES)
    lo, hi = -1.0, 2.0  # the first batch, then m <- m + 0.01 (m_b - m)
    for b in BATCHES[1:]:
        lo += 0.01 * (float(b.min()) - lo)
        hi += 0.01 * (float(b.max()) - hi)
    assert_qparams(q, lo, hi)


def test_percentile_preset_range():
    # k / 1000, k = 0..100000: quantile(p) = 100 p exactly (linear interp.)
    ramp = torch.arange(100001, dtype=torch.float64) / 1000
    batches = [(ramp - 20).float()[torch.randperm(100001)],
               (2 * ramp - 60).float()]
    q = calibrate(act_quantizer('percentile_w8a8'), *batches)
    lo, hi = 0.001 - 20, 99.999 - 20  # 1e-5 tails of batch 1
    lo += 0.01 * ((0.002 - 60) - lo)
    hi += 0.01 * ((199.998 - 60) - hi)
    s, z = fqvit_qparams(lo, hi)
    torch.testing.assert_close(q.scale, s.reshape(1), rtol=1e-5, atol=0)
    assert q.zero_point.tolist() == [z.item()]


def lp2(x, lo, hi):
    s, z = fqvit_qparams(lo, hi)
    xq = (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
    return float((x.double() - xq.double()).pow(2).mean())


def test_omse_preset_searches_last_batch_within_global_range():
    gen = torch.Generator().manual_seed(0)
    first = torch.randn(1, 500, generator=gen) * 8  # sets the range
    last = torch.randn(1, 500, generator=gen)
    q = calibrate(act_quantizer('omse_w8a8'), first, last)
    lo = min(float(first.min()), float(last.min()))
    hi = max(float(first.max()), float(last.max()))
    cands = [(lo * (1 - 0.01 * i), hi * (1 - 0.01 * i)) for i in range(90)]
    errs = [lp2(last, *c) for c in cands]
    best = min(range(90), key=lambda i: (errs[i], i))
    assert best > 10  # the wide range of batch 1 is shrunk for batch 2
    s, z = fqvit_qparams(*cands[best])
    torch.testing.assert_close(q.scale, s.reshape(1), rtol=1e-6, atol=0)
    assert q.zero_point.tolist() == [z.item()]
    # the generic mode averages the per-batch winners instead
    mean = calibrate(UniformQuantizer(observer=dict(type='OMSEObserver')),
                     first, last)
    assert not torch.equal(mean.scale, q.scale)


# ---------------------------------------------------------------------------
# Power-of-Two Factor
# ---------------------------------------------------------------------------
def ptf_reference(batches, max_alpha=3):
    """Layer-wise s, z from all batches' min / max; α_c by brute force on
    the last batch: argmin Σ (x − x̂)², x̂ with step s·2^(α − K)."""
    lo = min(float(b.min()) for b in batches)
    hi = max(float(b.max()) for b in batches)
    s, z = fqvit_qparams(lo, hi)
    last = batches[-1].reshape(-1, batches[-1].shape[-1])
    alphas = []
    for c in range(last.shape[1]):
        x = last[:, c]
        errs = []
        for a in range(max_alpha + 1):
            step = s / 2**max_alpha * 2**a
            xq = (torch.clamp(torch.round(x / step) + z, 0, 255) - z) * step
            errs.append(float((x.double() - xq.double()).pow(2).sum()))
        alphas.append(min(range(max_alpha + 1), key=lambda a: (errs[a], a)))
    return s, z, alphas


def residual_like(seed, tokens=64, channels=12):
    """(B, N, C) with channel ranges spread over two orders of magnitude,
    like the inter-channel variation of LayerNorm inputs."""
    gen = torch.Generator().manual_seed(seed)
    spread = torch.logspace(-1.5, 0.5, channels)
    return torch.randn(2, tokens, channels, generator=gen) * spread + \
        0.05 * torch.arange(channels)


def test_ptf_alpha_matches_brute_force():
    batches = [residual_like(1), residual_like(2)]
    batches[0][0, 0, 3] = 9.0  # the range comes from batch 1
    q = calibrate(PTFQuantizer(), *batches)
    s, z, alphas = ptf_reference(batches)
    assert q.alpha.tolist() == alphas
    assert len(set(alphas)) > 2  # small channels take small steps
    torch.testing.assert_close(q.scale, s / 8 * 2.0**torch.tensor(alphas))
    assert q.zero_point.tolist() == [z.item()] * 12  # one zero-point
    # x̂ with those parameters, channel by channel
    x = batches[1]
    step = (s / 8 * 2.0**torch.tensor(alphas))
    ref = (torch.clamp(torch.round(x / step) + z, 0, 255) - z) * step
    torch.testing.assert_close(q(x), ref)


def test_ptf_is_at_least_as_good_as_layer_wise():
    x = residual_like(3)
    ptf = calibrate(PTFQuantizer(), x)
    layer = calibrate(UniformQuantizer(), x)
    assert (ptf(x) - x).pow(2).sum() < 0.5 * (layer(x) - x).pow(2).sum()
    # α = K everywhere is the layer-wise quantizer
    ptf.alpha.fill_(3)
    ptf.update_qparams()
    torch.testing.assert_close(ptf(x), layer(x))


def test_ptf_arguments_are_checked():
    with pytest.raises(ValueError, match='range observer'):
        PTFQuantizer(observer=dict(type='OMSEObserver'))
    with pytest.raises(ValueError, match='max_alpha'):
        PTFQuantizer(max_alpha=-1)
    q = calibrate(PTFQuantizer(bits=6, max_alpha=2), residual_like(4))
    assert q.alpha.max() <= 2 and q.quant_max == 63


# ---------------------------------------------------------------------------
# Log-Int-Softmax
# ---------------------------------------------------------------------------
def ref_lis_row(x_int, S, bits):
    """I-BERT's i-exp and FQ-ViT's log2 rounding for one row of integer
    logits, in Python integers / floats (independent of the library)."""
    a, b, c = 0.35815147, 0.96963238, 1.0
    x0 = math.floor(-0.6931 / S)
    b_int, c_int = math.floor(b / a / S), math.floor(c / a / S**2)
    top = max(x_int)
    exps = []
    for v in x_int:
        d = max(v - top, 30 * x0)
        q = math.floor(d / x0)
        r = d - x0 * q
        exps.append(max(math.floor((r * (r + b_int) + c_int) * 2.0**(30 - q)),
                        0))
    total = sum(exps)
    out = []
    for e in exps:
        if e == 0:
            out.append(0.0)
            continue
        p_inv = round(total / e)  # an integer >= 1
        k = p_inv.bit_length() - 1  # floor(log2 P)
        if p_inv - 2**k >= 2**(k - 1):
            k += 1
        out.append(2.0**-k if k < 2**bits else 0.0)
    return out


def test_int_exp_is_the_ibert_polynomial():
    # exp(x) ≈ e·a·S²/2^30 (I-BERT's error bound grows with S: with
    # x0·S = ⌊−ln2/S⌋·S the range reduction uses a slightly wrong ln 2)
    S = 0.002
    x_int = torch.arange(-2500, 1).double()  # x in [-5, 0]
    e = int_exp(x_int, S)
    approx = e * 0.35815147 * S**2 / 2**30
    torch.testing.assert_close(approx, torch.exp(x_int * S), rtol=0.01,
                               atol=1e-3)
    # hand numbers: x = 0 → q = 0, r = 0: L = ⌊c/(aS²)⌋, times 2^30
    assert e[-1].item() == math.floor(1 / 0.35815147 / S**2) * 2**30


def test_exp_shift_is_the_same_lis_on_a_finer_grid():
    """exp_shift = m is log_int_softmax of x·2^m at step S/2^m; for a
    coarse step it fixes i-exp's ln 2 (⌊−ln2/S⌋·S = −0.57 at S = 0.19):
    the softmax before log2 rounding is far closer to the exact one."""
    gen = torch.Generator().manual_seed(0)
    S = 0.19
    x_int = torch.round(torch.randn(64, 17, generator=gen) * 20).double()
    torch.testing.assert_close(
        log_int_softmax(x_int, S, 4, exp_shift=4),
        log_int_softmax(x_int * 16, S / 16, 4))
    exact = torch.softmax(x_int * S, dim=-1)

    def soft(shift):
        x = x_int * 2**shift
        e = int_exp(x - x.amax(-1, keepdim=True), S / 2**shift)
        return e / e.sum(-1, keepdim=True)

    err0 = (soft(0) - exact).abs().max()
    err4 = (soft(4) - exact).abs().max()
    assert err4 < 0.2 * err0, (err0, err4)


@pytest.mark.parametrize('bits', [3, 4, 8])
def test_log_int_softmax_matches_reference(bits):
    gen = torch.Generator().manual_seed(bits)
    S = 0.07
    x_int = torch.round(torch.randn(5, 17, generator=gen) * 40)
    out = log_int_softmax(x_int, S, bits)
    ref = torch.tensor([ref_lis_row(r.tolist(), S, bits) for r in x_int],
                       dtype=torch.float64)
    assert torch.equal(out, ref)
    assert set(out.unique().tolist()) <= {0.0} | {2.0**-k
                                                  for k in range(2**bits)}


def test_log_int_softmax_hand_numbers():
    S = 0.01
    # 2 equal logits: P = 2 → 1/2; 3 equal: P = 3 = 1.5·2 → rounds up, 1/4;
    # far below the others: P beyond 2^(2^b − 1) → 0
    out = log_int_softmax(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), S, 4)
    assert out.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    out = log_int_softmax(torch.tensor([[5.0, 5.0, 5.0]]), S, 4)
    assert out.tolist() == [[0.25, 0.25, 0.25]]
    out = log_int_softmax(torch.tensor([[0.0, -2000.0]]), S, 4)  # e^-20
    assert out.tolist() == [[1.0, 0.0]]
    masked = torch.tensor([[False, True, False]])
    out = log_int_softmax(torch.zeros(1, 3), S, 4, masked)
    assert out.tolist() == [[0.5, 0.0, 0.5]]


def test_lis_quantizer_quantizes_logits_then_log_int_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, generator=gen) * 3
    q = LISQuantizer(bits=4, observer=dict(type='MinMaxObserver'))
    q.logits.enabled = False  # parallel calibration: FP softmax
    q.logits.observing = True
    torch.testing.assert_close(q(logits), logits.softmax(-1))
    q.logits.observing, q.logits.enabled = False, True
    s, z = fqvit_qparams(float(logits.min()), float(logits.max()))
    x_int = torch.clamp(torch.round(logits / s) + z, 0, 255) - z
    ref = torch.tensor([ref_lis_row(r.tolist(), float(s), 4)
                        for r in x_int.reshape(-1, 6)]).reshape(logits.shape)
    assert torch.equal(q(logits).double(), ref)
    assert q.describe()['bits'] == 4 and q.describe()['input_bits'] == 8


# ---------------------------------------------------------------------------
# integration: presets, LayerNorm wrapping, restore
# ---------------------------------------------------------------------------
def test_study_presets():
    for name in STUDY + ['fqvit_w8a8_attn4']:
        cfg = resolve_quant_cfg(load_quant_cfg(name))
        assert (cfg['w_bits'], cfg['a_bits']) == (8, 8)
        assert cfg['weight']['symmetric'] is True
        assert cfg['weight']['observer']['type'] == 'MinMaxObserver'
        assert cfg['calib'] == dict(cfg['calib'], num_samples=1000,
                                    batch_size=100, mode='parallel')
        assert cfg['norm'] is not None
    for name, observer in zip(STUDY, ['MinMaxObserver', 'EMAMinMaxObserver',
                                      'PercentileObserver', 'OMSEObserver']):
        cfg = resolve_quant_cfg(load_quant_cfg(name))
        for q in (cfg['act'], cfg['norm'], cfg['attn']['softmax']):
            assert q['type'] == 'UniformQuantizer'
            assert q['observer']['type'] == observer
    fq = resolve_quant_cfg(load_quant_cfg('fqvit_w8a8_attn4'))
    assert fq['norm']['type'] == 'PTFQuantizer'
    assert fq['attn']['softmax']['type'] == 'LISQuantizer'
    assert fq['attn']['softmax_bits'] == 4 and fq['attn']['bits'] is None


class OwnNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x) * 2


def test_norm_inputs_wrapped_skipped_and_restored():
    torch.manual_seed(0)
    model = TinyViT().eval()
    model.blocks[1].norm2 = OwnNorm(32)
    data = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    cfg = dict(load_quant_cfg('fqvit_w8a8_attn4'),
               overrides=[dict(name=r'blocks\.0\.norm2', skip=True)])
    ref = model(data[0])
    qmodel, summary = quantize_model(copy.deepcopy(model), cfg, data)
    rows = {r['name']: r for r in summary if r['kind'] == 'layernorm'}
    assert rows['blocks.0.norm1']['status'] == 'quantized'
    assert rows['blocks.0.norm1']['act']['quantizer'] == 'PTFQuantizer'
    assert rows['blocks.0.norm2']['reason'] == 'skipped by override'
    assert 'overrides the forward' in rows['blocks.1.norm2']['reason']
    assert isinstance(qmodel.blocks[0].norm1, QuantLayerNorm)
    assert torch.equal(qmodel.blocks[0].norm1.weight,
                       model.blocks[0].norm1.weight)
    softmax = [r for r in summary if r['kind'] == 'softmax']
    assert softmax and all(r['a_bits'] == 4 for r in softmax)
    out = qmodel(data[0])
    assert (out - ref).pow(2).mean() < 0.05 * ref.pow(2).mean()
    # a quantized checkpoint rebuilds the same model (PTF α included)
    fresh = copy.deepcopy(model)
    restore_quantized(fresh, quant_meta(summary))
    fresh.load_state_dict(qmodel.state_dict())
    assert torch.equal(fresh(data[0]), out)
    # default: LayerNorm stays FP
    _, plain = quantize_model(copy.deepcopy(model), dict(w_bits=8), data)
    assert not any(r['kind'] == 'layernorm' for r in plain)


def test_lis_site_with_softmax_dim_and_dtype():
    from mmptq.nn import QuantSoftmax
    q = LISQuantizer(bits=4)
    calibrate(q.logits, torch.randn(4, 5))
    site = QuantSoftmax(q)
    x = torch.randn(3, 4, 5)
    last = site(torch.softmax, x, -1)
    first = site(torch.softmax, x.transpose(0, 2), dim=0)
    assert torch.equal(first, last.transpose(0, 2))
    assert site(torch.softmax, x, 2, dtype=torch.float64).dtype == \
        torch.float64
    with pytest.raises(ValueError, match='explicit dim'):
        site(torch.softmax, x)


@pytest.mark.parametrize('preset', ['omse_w8a8', 'fqvit_w8a8_attn4'])
def test_hivit_fully_covered(preset):
    """The demo HiViT (random init): MLP-only early stages, patch merges
    and attention blocks; every Linear, LayerNorm input, both attention
    matmuls and the softmax quantized."""
    pytest.importorskip('mmpretrain')
    from mmptq.apis.analyze import (build_random_model, quantization_sqnr,
                                     synthetic_batch)
    model, scope = build_random_model('configs/demo/hivit-mini_mnist-cls.py')
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    norms = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    calib = [synthetic_batch(scope, 2, (28, 28), seed=i) for i in range(2)]
    result = quantization_sqnr(model, scope, load_quant_cfg(preset), calib,
                               synthetic_batch(scope, 2, (28, 28), seed=9))
    counts = result.summary.counts()
    assert not result.summary.fp_rows(), result.summary.fp_rows()
    assert counts['linear'] == dict(quantized=linears)
    assert counts['layernorm'] == dict(quantized=norms)
    for kind in ('qk', 'softmax', 'av'):
        assert counts[kind] == dict(quantized=7)  # the attention blocks
    assert result.sqnr > 15.0


# ---------------------------------------------------------------------------
# distributed calibration: every rank ends with the same PTF factors
# ---------------------------------------------------------------------------
def _ptf_worker(rank: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as torch_dist
    from helpers import loopback_env
    os.environ.update(loopback_env())
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', init_method=f'file://{init_file}',
                                  rank=rank, world_size=2)
    try:
        q = calibrate(PTFQuantizer(), residual_like(10 + rank))
        q.observer.sync()
        q.update_qparams()
        omse = calibrate(UniformQuantizer(observer=dict(
            type='OMSEObserver', running_range=True)),
            residual_like(20 + rank))
        omse.observer.sync()
        omse.update_qparams()
    finally:
        torch_dist.destroy_process_group()
    torch.save(dict(alpha=q.alpha, scale=q.scale, zp=q.zero_point,
                    omse=omse.scale),
               osp.join(out_dir, f'rank{rank}.pt'))


def test_ptf_factors_agree_across_ranks(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ptf_worker, args=(str(tmp_path / 'init'), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt') for r in range(2))
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    # α: the smallest sum of the ranks' error tables (each rank's last
    # batch within its own range); s and z from the global range
    data = [residual_like(10), residual_like(11)]
    errors = sum(calibrate(PTFQuantizer(), x)._errors for x in data)
    assert r0['alpha'].tolist() == errors.argmin(dim=1).tolist()
    whole = calibrate(PTFQuantizer(), *data)
    assert torch.equal(r0['zp'], whole.zero_point)
    torch.testing.assert_close(
        r0['scale'], whole.scale / 2.0**whole.alpha * 2.0**r0['alpha'])
