"""AGQ (PTQ4SAM, Lv et al. CVPR 2024): the levels against the
closed form, the τ search against hand-made inputs and against an
independent numpy re-implementation of the reference's calibration
(chengtao-lv/PTQ4SAM, LogAvgMSEFastObserver), and its use as the
``attn.softmax`` quantizer (it sees V)."""
import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

import mmptq  # noqa: F401  (registration)
from mmptq.apis import quantize_model
from mmptq.quantizers import AGQQuantizer, agq_search
from mmptq.registry import QUANTIZERS
from toy_models import ExplicitAttention, SDPAAttention


def calibrated(bits, tau, s):
    """An AGQQuantizer with τ and s set by hand (as after calibration)."""
    q = AGQQuantizer(bits=bits)
    q.tau.fill_(tau)
    q.set_qparams(torch.tensor([s]), torch.zeros(1))
    q.freeze()
    return q


@pytest.mark.parametrize('tau', [1, 2, 4])
@pytest.mark.parametrize('bits', [3, 4])
def test_levels_and_dead_zone_closed_form(tau, bits):
    s, levels = 0.8, 2**bits
    q = calibrated(bits, tau, s)
    codes = torch.arange(levels, dtype=torch.float64)
    # at the levels, and 0.3 / 0.7 of a step below them in the log domain
    for shift, code in ((0.0, codes), (0.3, codes), (0.7, codes + 1)):
        x = (s * torch.pow(2.0, -(codes + shift) / tau)).float()
        expected = s * torch.pow(2.0, -code.clamp(max=levels - 1) / tau)
        expected[code >= levels] = 0.0
        torch.testing.assert_close(q(x).double(), expected, rtol=1e-6,
                                   atol=0)
    # above s: the top level; codes ≥ 2^b (dead zone), 0 and x < 0: 0
    top = q(torch.tensor([s * 1.5, s * 10.0]))
    torch.testing.assert_close(top, torch.full((2, ), s))
    dead = torch.tensor([s * 2.0**(-(levels - 0.4) / tau),
                         s * 2.0**(-(levels + 3) / tau), 0.0, -0.1])
    assert torch.equal(q(dead), torch.zeros(4))


def test_registered_and_tau_in_state_dict():
    q = QUANTIZERS.build(dict(type='AGQQuantizer', bits=4, name='p'))
    x = torch.rand(2, 4, 6).softmax(-1)
    v = torch.randn(2, 6, 3)
    q.observing = True
    q(x, value=v)
    q.observing = False
    q.freeze()
    fresh = AGQQuantizer(bits=4)
    fresh.load_state_dict(q.state_dict())
    assert int(fresh.tau) == int(q.tau)
    assert torch.equal(fresh(x), q(x))


def test_needs_value_and_its_own_observer():
    q = AGQQuantizer(bits=4, name='p')
    q.observing = True
    with pytest.raises(RuntimeError, match='got no V'):
        q(torch.rand(3, 4))
    with pytest.raises(ValueError, match='AGQObserver'):
        AGQQuantizer(observer=dict(type='MinMaxObserver'))


def two_groups():
    """x (1, 8, 16): columns 0..7 at powers of 2 (exact for τ = 1),
    columns 8..15 at powers of 2^(1/4) (exact for τ = 4)."""
    gen = torch.Generator().manual_seed(0)
    pow2 = 2.0**-torch.randint(0, 7, (8, 8), generator=gen).float()
    pow4 = 2.0**(-torch.randint(0, 8, (8, 8), generator=gen).float() / 4)
    x = torch.cat([pow2, pow4], dim=1)[None]
    x[..., 0, 0] = x[..., 0, 8] = 1.0  # max x = 1: s = 1 fits both grids
    return x, torch.randn(1, 16, 4, generator=gen)


def test_search_picks_tau_of_lowest_matmul_error():
    """Same x, two V: zero on the rows of one column group, so only the
    other group's error counts after the matmul; the τ that is exact on
    that group wins."""
    x, v = two_groups()
    for zero_rows, tau in ((slice(8, 16), 1), (slice(0, 8), 4)):
        vz = v.clone()
        vz[:, zero_rows] = 0.0
        q = AGQQuantizer(bits=3)
        calibrate_with_value(q, x, vz)
        errors, _ = agq_search(x, vz, 3)
        assert int(q.tau) == tau == (1, 2, 4)[int(errors.argmin())]
        assert 3 * errors.min() < errors.sort().values[1]
        # the winner's grid holds that group exactly (s = 1)
        exact = calibrated(3, tau, 1.0)(x) @ vz
        torch.testing.assert_close(exact, x @ vz)


def test_batches_average_scales_and_sum_errors():
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(1, 2, 8, 12, generator=gen).mul(3).softmax(-1),
                torch.randn(1, 2, 12, 4, generator=gen)) for _ in range(3)]
    q = AGQQuantizer(bits=4)
    q.observing = True
    for x, v in batches:
        q(x, value=v)
    results = [agq_search(x, v, 4) for x, v in batches]
    errors = sum(e for e, _ in results)
    scales = sum(s for _, s in results) / 3
    k = int(errors.argmin())
    assert int(q.tau) == (1, 2, 4)[k]
    assert q.scale.item() == pytest.approx(scales[k].item(), rel=1e-6)


# ---------------------------------------------------------------------------
# against the reference's procedure, re-implemented here in numpy
# ---------------------------------------------------------------------------
def reference_log_quant(x, scale, bits, tau):
    """The reference's log fake-quant (fake_logquantize_per_tensor_affine),
    float32: x clamped to ≥ 1e-20, code round(−τ·log2(x/s)), zero where the
    code is ≥ 2^b."""
    levels = 2**bits
    x_int = np.round(-np.log2(np.maximum(x, np.float32(1e-20)) / scale) * tau)
    out = scale * np.exp2(-np.clip(x_int, 0, levels - 1) / tau)
    out[x_int >= levels] = 0
    return out.astype(np.float32)


def reference_calibration(x, v, bits, taus=(1, 2, 4), p=2.4):
    """One batch of the reference's LogAvgMSEFastObserver +
    AdaptiveGranularityQuantize: per τ, Brent over [min(0.1, 0.01·r), r],
    r = max(|min x|, max x), of mean |Q(x)·V − x·V|^2.4 with the scale
    cast to float32; τ = argmin of the errors."""
    xrange = max(abs(float(x.min())), float(x.max()))
    bounds = (min(0.1, 0.01 * xrange), xrange)
    target = x @ v
    found = []
    for tau in taus:

        def loss(s):
            xq = reference_log_quant(x, np.float32(s), bits, tau)
            return np.mean(np.abs(xq @ v - target)**np.float32(p))

        res = minimize_scalar(loss, bounds=bounds, method='Bounded')
        found.append((float(res.fun), float(res.x), tau))
    err, scale, tau = min(found)
    return tau, scale


@pytest.mark.parametrize('bits, temperature', [(4, 1.0), (4, 3.0), (6, 2.0),
                                               (3, 0.5)])
def test_matches_reference_procedure(bits, temperature):
    gen = torch.Generator().manual_seed(bits)
    logits = torch.randn(1, 4, 16, 64, generator=gen) * temperature
    x = logits.softmax(-1)
    v = torch.randn(1, 4, 64, 8, generator=gen)
    q = AGQQuantizer(bits=bits)
    calibrate_with_value(q, x, v)
    tau, scale = reference_calibration(x.numpy(), v.numpy(), bits)
    print(f'bits={bits} T={temperature}: mmptq tau={int(q.tau)} '
          f's={q.scale.item():.6f}; reference tau={tau} s={scale:.6f}')
    assert int(q.tau) == tau
    assert q.scale.item() == pytest.approx(scale, rel=1e-4)


def calibrate_with_value(q, x, v):
    q.observing = True
    q(x, value=v)
    q.observing = False


# ---------------------------------------------------------------------------
# as the attn.softmax quantizer: applied where the probabilities meet V
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('cls', [ExplicitAttention, SDPAAttention])
def test_softmax_site_sees_v_of_the_attention(cls):
    torch.manual_seed(0)
    model = cls().eval()
    data = [torch.randn(2, 10, 32)]
    with torch.no_grad():
        q_, k_, v_ = model.split(data[0])
        probs = ((q_ * q_.shape[-1]**-0.5) @ k_.transpose(-2, -1)).softmax(-1)
    errors, scales = agq_search(probs, v_, 4)
    cfg = dict(w_bits=4, a_bits=4, calib=dict(mode='parallel'),
               attn=dict(softmax=dict(type='AGQQuantizer')))
    qmodel, summary = quantize_model(model, cfg, data)
    agq = [m for m in qmodel.modules() if isinstance(m, AGQQuantizer)]
    assert len(agq) == 1
    k = int(errors.argmin())
    assert int(agq[0].tau) == (1, 2, 4)[k]
    assert agq[0].scale.item() == pytest.approx(scales[k].item(), rel=1e-5)
    row = next(r for r in summary if 'softmax' in r.get('operands', {}))
    assert row['operands']['softmax']['quantizer'] == 'AGQQuantizer'
    # the quantized probabilities are what meets V: with every other
    # quantizer off, the output is proj(Q(p)·V)
    for m in qmodel.modules():
        if hasattr(m, 'enabled') and m is not agq[0]:
            m.enabled = False
    with torch.no_grad():
        expected = model.merge(agq[0](probs) @ v_)
        torch.testing.assert_close(qmodel(data[0]), expected)



@pytest.mark.parametrize('cls', [ExplicitAttention, SDPAAttention])
def test_quantized_checkpoint_restores_tau(cls):
    from mmptq.core.restore import quant_meta, restore_quantized
    torch.manual_seed(0)
    model = cls().eval()
    fresh = copy.deepcopy(model)
    data = [torch.randn(2, 10, 32)]
    cfg = dict(w_bits=4, a_bits=4,
               attn=dict(softmax=dict(type='AGQQuantizer', taus=(1, 4))))
    _, summary = quantize_model(model, cfg, data)
    restore_quantized(fresh, quant_meta(summary))
    fresh.load_state_dict(model.state_dict(), strict=True)
    tau, = [int(m.tau) for m in model.modules()
            if isinstance(m, AGQQuantizer)]
    assert tau == 4  # not the initial value: the checkpoint carries it
    assert [int(m.tau) for m in fresh.modules()
            if isinstance(m, AGQQuantizer)] == [tau]
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), model(data[0]))
