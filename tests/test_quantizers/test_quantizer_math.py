"""Numerics of the fake quantizers against closed-form math.

Every expected number is written from the docstring formulas:
uniform  x̂ = (clamp(round(x/s) + z, q_min, q_max) − z)·s,
log      x̂ = s·2^(−q/τ), q = clamp(round(−τ·log2(x/s)), 0, 2^b − 1),
         and 0 where round(−τ·log2(x/s)) ≥ 2^b.
"""
import math

import pytest
import torch
from torch import nn

import mmptq  # noqa: F401  (registration)
from mmptq.quantizers import (Log2Quantizer, LogSqrt2Quantizer,
                              UniformQuantizer, check_bits, grad_scale,
                              round_ste)
from mmptq.registry import QUANTIZERS, build_checked
from helpers import calibrate

UNIFORM_MODES = [
    # (symmetric, signed)
    (False, False),
    (False, True),
    (True, True),
    (True, False),
]


def qrange(bits, signed):
    if signed:
        return -2**(bits - 1), 2**(bits - 1) - 1
    return 0, 2**bits - 1


def ref_fake_quant(x, scale, zero_point, qmin, qmax):
    """(clamp(round(x/s) + z, q_min, q_max) − z)·s."""
    return (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) -
            zero_point) * scale


def assert_exact(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# UniformQuantizer: parameters from a known range
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    'bits, symmetric, signed, data, scale, zero_point',
    [
        # 8 bits, range [-1, 3]: s = 4/255; z = q_min − round(−1/s)
        # = q_min − round(−63.75) = q_min + 64
        (8, False, False, [-1.0, 0.5, 3.0], 4 / 255, 64),
        (8, False, True, [-1.0, 0.5, 3.0], 4 / 255, -64),
        # symmetric signed: s = 2·max(|lo|, |hi|)/255 = 6/255
        (8, True, True, [-1.0, 0.5, 3.0], 6 / 255, 0),
        # symmetric unsigned: s = hi/255 (lo is ignored)
        (8, True, False, [0.0, 0.5, 3.0], 3 / 255, 0),
        (8, True, False, [-1.0, 0.5, 3.0], 3 / 255, 0),
        # 4 bits, range [-0.5, 1]: s = 1.5/15 = 0.1, z = q_min + 5
        (4, False, False, [1.0, -0.5, 0.2], 0.1, 5),
        (4, False, True, [1.0, -0.5, 0.2], 0.1, -3),
        (4, True, True, [1.0, -0.5, 0.2], 2 / 15, 0),
        (4, True, False, [1.0, 0.0, 0.2], 1 / 15, 0),
        # the range is widened to contain 0
        (4, False, False, [0.5, 2.0], 2 / 15, 0),
        (4, False, False, [-2.0, -0.5], 2 / 15, 15),
        (4, False, True, [-2.0, -0.5], 2 / 15, 7),
        # 2 bits, range [-1, 2]: s = 1, z = q_min + 1
        (2, False, False, [-1.0, 2.0], 1.0, 1),
        (2, True, True, [-1.0, 2.0], 4 / 3, 0),
    ])
def test_uniform_qparams_from_minmax(bits, symmetric, signed, data, scale,
                                     zero_point):
    q = calibrate(
        UniformQuantizer(bits=bits, symmetric=symmetric, signed=signed),
        torch.tensor(data))
    assert q.scale.shape == (1, ) and q.zero_point.shape == (1, )
    torch.testing.assert_close(q.scale, torch.tensor([scale]))
    assert_exact(q.zero_point, torch.tensor([float(zero_point)]))
    assert (q.quant_min, q.quant_max) == qrange(bits, signed)


def test_uniform_signed_defaults_to_symmetric():
    assert UniformQuantizer(bits=4, symmetric=True).quant_min == -8
    assert UniformQuantizer(bits=4, symmetric=False).quant_min == 0
    assert UniformQuantizer(bits=4, symmetric=False,
                            signed=True).quant_max == 7


# ---------------------------------------------------------------------------
# UniformQuantizer: the fake-quant function
# ---------------------------------------------------------------------------
def test_uniform_fake_quant_hand_numbers_asymmetric():
    # s = 0.1, z = 5, [q_min, q_max] = [0, 15]: representable [-0.5, 1.0]
    q = calibrate(UniformQuantizer(bits=4), torch.tensor([-0.5, 1.0]))
    x = torch.tensor(
        [-0.9, -0.5, -0.26, 0.0, 0.04, 0.31, 0.66, 1.0, 1.2, 5.0])
    # x/s:   -9   -5  -2.6  0  0.4  3.1  6.6  10  12  50
    # +z:    -4    0    2   5    5    8   12  15  17  55  → clamp [0, 15]
    expected = torch.tensor(
        [-0.5, -0.5, -0.3, 0.0, 0.0, 0.3, 0.7, 1.0, 1.0, 1.0])
    torch.testing.assert_close(q(x), expected)
    torch.testing.assert_close(
        q(x), ref_fake_quant(x, q.scale, q.zero_point, 0, 15))


def test_uniform_fake_quant_hand_numbers_symmetric():
    # s = 2·0.7/15, z = 0, [q_min, q_max] = [-8, 7]
    q = calibrate(
        UniformQuantizer(bits=4, symmetric=True), torch.tensor([-0.7, 0.35]))
    s = 1.4 / 15
    x = torch.tensor([-1.0, -0.75, -0.2, 0.1, 0.35, 0.66, 0.9])
    # x/s: -10.7 -8.04 -2.14 1.07 3.75 7.07 9.64 → round, clamp [-8, 7]
    expected = torch.tensor([-8.0, -8.0, -2.0, 1.0, 4.0, 7.0, 7.0]) * s
    torch.testing.assert_close(q(x), expected)


@pytest.mark.parametrize('symmetric, signed', UNIFORM_MODES)
@pytest.mark.parametrize('bits', [2, 3, 4, 8, 16])
def test_uniform_formula_and_grid(bits, symmetric, signed):
    gen = torch.Generator().manual_seed(bits)
    calib = torch.randn(257, generator=gen) * 2 + 0.3
    if symmetric and not signed:
        calib = calib.abs()
    q = calibrate(
        UniformQuantizer(bits=bits, symmetric=symmetric, signed=signed),
        calib)
    qmin, qmax = qrange(bits, signed)
    # inputs well beyond the range on both sides
    x = torch.cat([
        torch.randn(1000, generator=gen) * 4,
        torch.tensor([-100.0, 100.0, 0.0])
    ])
    out = q(x)
    s, z = q.scale, q.zero_point
    torch.testing.assert_close(out, ref_fake_quant(x, s, z, qmin, qmax))
    # every output is on the grid (k − z)·s, k integer in [q_min, q_max]
    k = out.double() / s.double() + z.double()
    # float32 outputs: tolerance ≪ 0.5 even for 16 bits
    torch.testing.assert_close(k, k.round(), rtol=1e-6, atol=1e-3)
    assert k.round().min() >= qmin and k.round().max() <= qmax
    # both ends are reached by the far-out inputs
    torch.testing.assert_close(out[-3], ((qmin - z) * s)[0])
    torch.testing.assert_close(out[-2], ((qmax - z) * s)[0])
    assert torch.unique(out).numel() <= 2**bits
    # zero is exactly representable
    assert out[-1].item() == 0.0


@pytest.mark.parametrize('bits', list(range(2, 17)))
def test_bits_accepted(bits):
    assert check_bits(bits) == bits
    assert UniformQuantizer(bits=bits).bits == bits
    q = UniformQuantizer(bits=bits)
    assert q.quant_max - q.quant_min == 2**bits - 1
    assert Log2Quantizer(bits=bits).bits == bits
    assert LogSqrt2Quantizer(bits=bits).bits == bits


@pytest.mark.parametrize('bits', [0, 1, 17, 33, -4, True, False, 2.5,
                                  '8', None])
@pytest.mark.parametrize('cls',
                         [UniformQuantizer, Log2Quantizer, LogSqrt2Quantizer])
def test_bits_rejected(cls, bits):
    with pytest.raises(ValueError, match=r'2\.\.16') as err:
        cls(bits=bits, name='backbone.fc')
    assert 'backbone.fc' in str(err.value)
    with pytest.raises(ValueError, match='out of range'):
        check_bits(bits)


def test_bad_granularity_is_an_error():
    with pytest.raises(ValueError, match='granularity'):
        UniformQuantizer(granularity='row')
    with pytest.raises(ValueError, match='group_size'):
        UniformQuantizer(granularity='group')
    with pytest.raises(ValueError, match='group_size'):
        UniformQuantizer(granularity='group', group_size=0)


# ---------------------------------------------------------------------------
# granularity
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('ch_axis', [0, 1, 2, -1, -2])
@pytest.mark.parametrize('symmetric, signed', UNIFORM_MODES)
def test_per_channel_equals_per_tensor_on_each_channel(ch_axis, symmetric,
                                                      signed):
    gen = torch.Generator().manual_seed(3)
    # channels with very different ranges
    x = torch.randn(3, 4, 5, generator=gen)
    x = x * torch.arange(1, x.numel() + 1).reshape(x.shape) / 10
    if symmetric and not signed:
        x = x.abs()
    x2 = torch.randn(3, 4, 5, generator=gen) * 3
    cfg = dict(bits=4, symmetric=symmetric, signed=signed)
    per_ch = calibrate(
        UniformQuantizer(granularity='channel', ch_axis=ch_axis, **cfg), x)
    out, out2 = per_ch(x), per_ch(x2)
    n_ch = x.shape[ch_axis]
    assert per_ch.scale.shape == (n_ch, )
    for c in range(n_ch):
        ref = calibrate(UniformQuantizer(**cfg), x.select(ch_axis, c))
        torch.testing.assert_close(per_ch.scale[c:c + 1], ref.scale)
        assert_exact(per_ch.zero_point[c:c + 1], ref.zero_point)
        torch.testing.assert_close(
            out.select(ch_axis, c), ref(x.select(ch_axis, c)))
        torch.testing.assert_close(
            out2.select(ch_axis, c), ref(x2.select(ch_axis, c)))


@pytest.mark.parametrize('cls', [Log2Quantizer, LogSqrt2Quantizer])
def test_log_per_channel_equals_per_tensor_on_each_channel(cls):
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 16, generator=gen) * torch.tensor([1.0, 0.3,
                                                           0.05])[:, None]
    per_ch = calibrate(cls(bits=3, granularity='channel', ch_axis=1), x)
    out = per_ch(x)
    for c in range(3):
        ref = calibrate(cls(bits=3), x[:, c])
        torch.testing.assert_close(per_ch.scale[c:c + 1], ref.scale)
        torch.testing.assert_close(out[:, c], ref(x[:, c]))


@pytest.mark.parametrize('cls', [Log2Quantizer, LogSqrt2Quantizer])
@pytest.mark.parametrize('granularity', ['tensor', 'channel'])
def test_log_inference_path_equals_the_straight_through_path(
        cls, granularity):
    """Without autograd the codes are read from a cached level table over
    the flattened input; the values must be those of the autograd path,
    also for a non-contiguous (permuted) input and its zeros."""
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(3, 5, 7, generator=gen).softmax(-1).permute(2, 0, 1)
    x[0, 0] = 0.0  # below every level
    q = calibrate(cls(bits=4, granularity=granularity, ch_axis=1),
                  x.contiguous())
    q.scale.data.mul_(0.5)  # some ratios above 1: clamped to level 0
    with torch.no_grad():
        fast = q(x)
    slow = q(x.clone().requires_grad_(True)).detach()
    assert_exact(fast, slow)
    assert (fast == 0).any() and fast.shape == x.shape


@pytest.mark.parametrize('shape, ch_axis, group_size', [
    ((4, 6, 2), 0, 4),
    ((4, 6, 2), 1, 4),
    ((4, 6, 2), -1, 6),
    ((3, 8), 0, 2),
    ((3, 8), 0, 8),
])
@pytest.mark.parametrize('symmetric', [False, True])
def test_per_group_equals_per_tensor_on_each_group(shape, ch_axis, group_size,
                                                  symmetric):
    gen = torch.Generator().manual_seed(5)
    numel = math.prod(shape)
    x = torch.randn(shape, generator=gen) * torch.linspace(
        0.1, 3, numel).reshape(shape)
    cfg = dict(bits=3, symmetric=symmetric)
    grp = calibrate(
        UniformQuantizer(
            granularity='group', ch_axis=ch_axis, group_size=group_size,
            **cfg), x)
    out = grp(x)
    assert out.shape == x.shape
    # groups: per index of ch_axis, consecutive elements of the flattened
    # remaining dims
    lead_x = x.movedim(ch_axis, 0).reshape(x.shape[ch_axis], -1)
    lead_out = out.movedim(ch_axis, 0).reshape(x.shape[ch_axis], -1)
    n_groups = lead_x.shape[1] // group_size
    assert grp.scale.numel() == lead_x.shape[0] * n_groups
    for c in range(lead_x.shape[0]):
        for g in range(n_groups):
            cols = slice(g * group_size, (g + 1) * group_size)
            ref = calibrate(UniformQuantizer(**cfg), lead_x[c, cols])
            torch.testing.assert_close(lead_out[c, cols],
                                       ref(lead_x[c, cols]))
            torch.testing.assert_close(grp.scale[c * n_groups + g],
                                       ref.scale[0])


def test_group_size_must_divide():
    q = UniformQuantizer(
        granularity='group', group_size=5, name='neck.conv1', observer=None)
    q.observing = True
    with pytest.raises(ValueError, match='group_size=5 does not divide') as e:
        q(torch.randn(4, 12))
    assert 'neck.conv1' in str(e.value)


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------
def test_straight_through_gradient():
    # s = 0.1, z = 5: grid [-0.5, 1.0]
    q = calibrate(UniformQuantizer(bits=4), torch.tensor([-0.5, 1.0]))
    x = torch.tensor([-0.9, -0.6, -0.44, -0.13, 0.0, 0.52, 0.97, 1.2, 3.0],
                     requires_grad=True)
    q(x).sum().backward()
    assert_exact(x.grad, torch.tensor([0., 0., 1., 1., 1., 1., 1., 0., 0.]))
    assert not isinstance(q.scale, nn.Parameter)


def test_lsq_scale_gradient_symmetric():
    q = UniformQuantizer(bits=4, symmetric=True)  # [q_min, q_max] = [-8, 7]
    q.set_qparams(torch.tensor([0.5]), torch.tensor([0.0]))
    scale = q.learn_scale()
    assert isinstance(scale, nn.Parameter) and scale.requires_grad
    assert [p for p in q.parameters()] == [scale]
    x = torch.tensor([0.3, -0.7, 1.26, 5.0, -6.0, 2.2], requires_grad=True)
    w = torch.tensor([1.0, 2.0, -1.0, 0.5, 1.0, 3.0])
    out = q(x)
    # forward is unchanged by learning the step
    torch.testing.assert_close(out.detach(),
                               ref_fake_quant(x.detach(), 0.5, 0.0, -8, 7))
    (out * w).sum().backward()
    # Esser et al. 2020, Eq. 3 with v/s = 0.6 -1.4 2.52 10 -12 4.4:
    # −v/s + round(v/s) inside (−Q_N, Q_P), Q_P = 7 above, −Q_N = −8 below
    d = [0.4, 0.4, 0.48, 7.0, -8.0, -0.4]
    g = 1 / math.sqrt(6 * 7)  # 1/sqrt(N·Q_P)
    expected = g * sum(di * wi for di, wi in zip(d, w.tolist()))
    torch.testing.assert_close(scale.grad, torch.tensor([expected]))
    # the input still gets the straight-through gradient
    assert_exact(x.grad, w * torch.tensor([1., 1., 1., 0., 0., 1.]))


def test_lsq_scale_gradient_asymmetric():
    q = UniformQuantizer(bits=4)  # [0, 15]
    q.set_qparams(torch.tensor([0.2]), torch.tensor([3.0]))
    scale = q.learn_scale()
    x = torch.tensor([0.13, -1.0, 3.0, -0.33, 1.91])
    q(x).sum().backward()
    # v/s = 0.65 -5 15 -1.65 9.55; round(v/s) + z = 4 -2 18 1 13
    # inside: round(v/s) − v/s; below: q_min − z = −3; above: q_max − z = 12
    d = [0.35, -3.0, 12.0, -0.35, 0.45]
    expected = sum(d) / math.sqrt(5 * 15)
    torch.testing.assert_close(scale.grad, torch.tensor([expected]))
    assert q.zero_point.grad is None


def test_lsq_scale_gradient_per_channel():
    q = UniformQuantizer(bits=4, symmetric=True, granularity='channel')
    q.set_qparams(torch.tensor([0.5, 0.25]), torch.tensor([0.0, 0.0]))
    scale = q.learn_scale()
    x = torch.tensor([[0.3, -0.7, 5.0], [0.3, -0.7, 5.0]])
    q(x).sum().backward()
    # channel 0: v/s = 0.6 -1.4 10 → 0.4 0.4 7
    # channel 1: v/s = 1.2 -2.8 20 → -0.2 -0.2 7
    g = 1 / math.sqrt(3 * 7)  # N per step = 3 elements per channel
    expected = torch.tensor([0.4 + 0.4 + 7.0, -0.2 - 0.2 + 7.0]) * g
    torch.testing.assert_close(scale.grad, expected)


def test_learn_scale_then_freeze():
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    q = calibrate(UniformQuantizer(bits=4, granularity='channel'), x)
    before = q(x)
    scale = q.learn_scale()
    assert q.learn_scale() is scale  # idempotent
    assert 'scale' not in q._buffers
    with torch.no_grad():
        scale.mul_(1.5)
    learnt = q(x).detach()
    q.freeze()
    assert q.observer is None
    assert not q.observing
    assert 'scale' in q._buffers and 'scale' not in q._parameters
    assert not isinstance(q.scale, nn.Parameter)
    assert list(q.parameters()) == []
    assert_exact(q(x), learnt)
    assert not torch.equal(learnt, before)
    assert set(q.state_dict()) == {'scale', 'zero_point'}


def test_observing_again_turns_learnt_scale_into_buffer():
    q = calibrate(UniformQuantizer(bits=4), torch.tensor([-1.0, 1.0]))
    q.learn_scale()
    calibrate(q, torch.tensor([-2.0, 2.0]))
    assert 'scale' in q._buffers and list(q.parameters()) == []


# ---------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('freeze', [False, True])
@pytest.mark.parametrize('cfg', [
    dict(type='UniformQuantizer', bits=4),
    dict(type='UniformQuantizer', bits=3, symmetric=True,
         granularity='channel', ch_axis=1),
    dict(type='UniformQuantizer', bits=4, granularity='group', group_size=4,
         observer=dict(type='MSEObserver')),
    dict(type='LogSqrt2Quantizer', bits=4),
    dict(type='Log2Quantizer', bits=3, granularity='channel'),
])
def test_state_dict_round_trip_into_fresh_quantizer(cfg, freeze):
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(3, 8, generator=gen) * 4 - 1
    if 'Log' in cfg['type']:
        x = x.abs()
    q = calibrate(QUANTIZERS.build(cfg), x, x * 0.5)
    if freeze:
        q.freeze()
    expected = q(x)
    fresh = QUANTIZERS.build(cfg)
    assert not fresh.calibrated
    fresh.load_state_dict(q.state_dict())
    assert fresh.calibrated
    assert_exact(fresh.scale, q.scale)
    assert_exact(fresh.zero_point, q.zero_point)
    assert_exact(fresh(x), expected)
    if not freeze:
        # the observer's state came along: calibration continues identically
        x3 = x * 2
        calibrate(q, x3)
        calibrate(fresh, x3)
        assert_exact(fresh.scale, q.scale)
        assert_exact(fresh(x), q(x))


def test_use_before_calibration_is_an_error():
    q = UniformQuantizer(bits=8, name='head.fc_cls')
    assert not q.calibrated
    with pytest.raises(RuntimeError, match='before calibration') as err:
        q(torch.ones(3))
    assert 'head.fc_cls' in str(err.value)
    with pytest.raises(RuntimeError, match='calibrate'):
        q.learn_scale()
    with pytest.raises(RuntimeError, match='before calibration'):
        Log2Quantizer(bits=4)(torch.ones(3))
    # frozen without data: disabled, the input passes through untouched,
    # and a state-dict round trip keeps it that way
    q.freeze()
    assert not q.enabled and q.observer is None
    x = torch.randn(5)
    assert q(x) is x
    fresh = UniformQuantizer(bits=8)
    fresh.freeze()
    fresh.enabled = True
    fresh.load_state_dict(q.state_dict())
    assert not fresh.enabled and fresh(x) is x


def test_degenerate_range_stays_finite():
    """A layer that saw only zeros during calibration (a dead channel) must
    not turn later inputs into NaN: x/s may overflow for the tiny step."""
    q = calibrate(
        UniformQuantizer(bits=8, granularity='channel'), torch.zeros(2, 4))
    x = torch.tensor([[0.0, 1.0, 10.0, -1e6], [3e38, -3e38, 5.0, 0.5]])
    for requires_grad in (False, True):  # inference / reconstruction
        xx = x.clone().requires_grad_(requires_grad)
        out = q(xx)
        assert torch.isfinite(out).all()
        assert out.abs().max() < 1e-30
        if requires_grad:
            out.sum().backward()
            assert torch.isfinite(xx.grad).all()
    for cls in (Log2Quantizer, LogSqrt2Quantizer):
        lq = calibrate(cls(bits=4), torch.zeros(4))
        for requires_grad in (False, True):
            xx = torch.tensor([0.0, 1.0, 10.0, 1e30],
                              requires_grad=requires_grad)
            assert torch.isfinite(lq(xx)).all()


def test_round_ste_and_grad_scale():
    for requires_grad in (False, True):
        x = torch.tensor([-2.6, -0.4, 0.49, 1.51, 7.0, math.inf, -math.inf],
                         requires_grad=requires_grad)
        assert_exact(
            round_ste(x).detach(),
            torch.tensor([-3.0, -0.0, 0.0, 2.0, 7.0, math.inf, -math.inf]))
    x = torch.tensor([-2.6, 0.3, 1.7], requires_grad=True)
    (round_ste(x) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert_exact(x.grad, torch.tensor([1.0, 2.0, 3.0]))
    s = torch.tensor(0.7, requires_grad=True)
    y = grad_scale(s, 0.25)
    assert y.item() == pytest.approx(0.7)
    (3 * y).backward()
    assert s.grad.item() == pytest.approx(0.75)


# ---------------------------------------------------------------------------
# log quantizers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('cls, tau', [(Log2Quantizer, 1),
                                      (LogSqrt2Quantizer, 2)])
@pytest.mark.parametrize('s', [1.0, 0.8])
def test_log_levels_hand_made(cls, tau, s):
    bits = 3  # q = 0..7
    q = calibrate(cls(bits=bits), torch.tensor([0.01, s, 0.3 * s]))
    torch.testing.assert_close(q.scale, torch.tensor([s]))
    e = [
        # at the levels
        *[(k, k) for k in range(8)],
        # between levels: rounding happens on −τ·log2(x/s)
        *[(k + 0.3, k) for k in range(8)],
        *[(k + 0.7, k + 1) for k in range(7)],
        *[(k + 0.45, k) for k in range(8)],
        *[(k + 0.55, k + 1) for k in range(7)],
    ]
    t = torch.tensor([a for a, _ in e], dtype=torch.float64)
    x = (s * torch.pow(2.0, -t / tau)).float()
    expected = (s * torch.pow(2.0, -torch.tensor(
        [b for _, b in e], dtype=torch.float64) / tau)).float()
    out = q(x)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
    levels = s * 2.0**(-torch.arange(8, dtype=torch.float64) / tau)
    torch.testing.assert_close(
        torch.unique(out), torch.sort(levels.float()).values, rtol=1e-6,
        atol=0)
    # above the top: s; below the smallest level (by more than half a step in
    # the log domain), zero and negative inputs: exactly 0
    high = q(torch.tensor([s * 1.001, s * 1.4, s * 100.0]))
    torch.testing.assert_close(high, torch.full((3, ), s))
    low = torch.tensor(
        [s * 2.0**(-7.6 / tau), s * 2.0**(-9 / tau), s * 1e-20, 0.0, -0.3])
    assert_exact(q(low), torch.zeros(5))


def ref_log_sqrt2(x, s, bits):
    """RepQ-ViT's integer form in float64."""
    x = x.double()
    t = -2 * torch.log2(x / s)
    q_raw = torch.round(t)
    q = q_raw.clamp(0, 2**bits - 1)
    out = s * torch.pow(2.0, -torch.ceil(q / 2)) * (
        1 + (math.sqrt(2) - 1) * torch.remainder(q, 2))
    out[(q_raw >= 2**bits) | (x <= 0)] = 0.0
    return out, t


@pytest.mark.parametrize('bits', [2, 3, 4, 6, 8])
def test_log_sqrt2_equals_repq_integer_form(bits):
    gen = torch.Generator().manual_seed(bits)
    s = 0.7
    q = calibrate(LogSqrt2Quantizer(bits=bits), torch.tensor([0.0, s]))
    # exponents spanning the whole grid and beyond, capped to keep float32
    # normal (2^-126)
    t_max = min(2**bits + 6, 230)
    t = torch.rand(4000, generator=gen, dtype=torch.float64) * (t_max + 2) - 2
    x = (s * torch.pow(2.0, -t / 2)).float()
    x = torch.cat([x, torch.tensor([0.0, 0.0, s])])
    expected, t_exact = ref_log_sqrt2(x, s, bits)
    # leave out inputs within 1e-3 of a rounding tie in the log domain
    frac = t_exact - torch.floor(t_exact)
    ok = ~((frac - 0.5).abs() < 1e-3) | (x == 0)
    out = q(x)
    torch.testing.assert_close(
        out[ok].double(), expected[ok], rtol=2e-6, atol=0)
    assert ok.sum() > 3900
    assert (out[-3:-1] == 0).all()
    # x̂ = s·2^(−q/2): the output set is a subset of the levels and 0
    levels = s * 2.0**(-torch.arange(2**bits, dtype=torch.float64) / 2)
    allowed = torch.cat([levels.float(), torch.zeros(1)])
    dist = (out[:, None] - allowed[None]).abs().min(dim=1).values
    assert (dist <= 1e-6 * out.abs()).all()


@pytest.mark.parametrize('cls', [Log2Quantizer, LogSqrt2Quantizer])
@pytest.mark.parametrize('bits', list(range(2, 17)))
def test_log_zero_maps_to_zero_for_every_bit_width(cls, bits):
    q = calibrate(cls(bits=bits), torch.tensor([0.0, 0.5, 1.0]))
    assert_exact(q(torch.tensor([0.0, -0.5, -1e-3])), torch.zeros(3))
    assert q(torch.tensor([1.0])).item() == 1.0


@pytest.mark.parametrize('bits', [2, 4])
def test_log2_output_set(bits):
    s = 0.9
    q = calibrate(Log2Quantizer(bits=bits), torch.tensor([s]))
    gen = torch.Generator().manual_seed(0)
    x = s * torch.rand(2000, generator=gen)**4
    levels = {
        float(v)
        for v in (s * 2.0**(-torch.arange(2**bits, dtype=torch.float64))
                  ).float()
    }
    out = set(q(x).tolist())
    assert out <= levels | {0.0}
    # fine enough sampling reaches every level and zero
    assert out == levels | {0.0}


def test_log_gradient_is_straight_through():
    q = calibrate(LogSqrt2Quantizer(bits=4), torch.tensor([1.0]))
    x = torch.tensor([0.6, 0.1, 0.02], requires_grad=True)
    q(x).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).all()


def test_unknown_quantizer_type_names_nearest():
    with pytest.raises(ValueError) as err:
        build_checked(QUANTIZERS, dict(type='LogSqrt2Quantiser'),
                      'attn.softmax')
    msg = str(err.value)
    assert 'attn.softmax' in msg and 'LogSqrt2Quantizer' in msg
    assert isinstance(
        build_checked(QUANTIZERS, dict(type='mmptq.Log2Quantizer', bits=4),
                      'attn.softmax'), Log2Quantizer)


@pytest.mark.parametrize('cls', [Log2Quantizer, LogSqrt2Quantizer])
def test_log_quantizer_straight_through_only_with_grad(cls):
    """Under no grad the levels come from the table alone, bit-identical to
    the graph with the straight-through term; with grad, the STE's
    d x̂/dx: x̂ = s·2^(−q/τ), dq/dx = −τ/(x·ln 2) through the rounding,
    so d x̂/dx = x̂ / x in range, 0 in the dead zone below the smallest
    level."""
    q = calibrate(cls(bits=3), torch.tensor([0.0, 1.0]))
    x = torch.tensor([1e-4, 0.01, 0.2, 0.37, 0.5, 0.99, 1.0])
    with torch.no_grad():
        plain = q(x)
    xx = x.clone().requires_grad_(True)
    out = q(xx)
    assert torch.equal(out.detach(), plain)
    out.sum().backward()
    # 3 bits: the smallest level is 2^(−7/τ); below it, x̂ = 0
    alive = x >= 2.0**(-7.5 / cls.root)
    assert torch.allclose(xx.grad, alive * plain / x, atol=1e-6), xx.grad


@pytest.mark.parametrize('cls', [Log2Quantizer, LogSqrt2Quantizer])
@pytest.mark.parametrize('bits', [2, 4, 6, 7, 8])
def test_log_without_grad_equals_the_autograd_path(cls, bits):
    """Without autograd the log quantizers take a shorter path (one zero
    level past the table instead of a mask); the values are bit-identical
    to the straight-through path's, down to zero, negative, subnormal and
    over-range inputs (8-bit log2 reaches past float32's normal range and
    keeps the masked path)."""
    gen = torch.Generator().manual_seed(bits)
    x = torch.cat([
        torch.softmax(8 * torch.randn(4000, generator=gen), 0),
        torch.tensor([0.0, -0.0, -1.0, 1e-44, 1e-39, 2.0**-126, 0.9, 5.0]),
    ])
    q = calibrate(cls(bits=bits), torch.tensor([0.0, 0.9]))
    fast = q(x)
    graded = q(x.clone().requires_grad_()).detach()
    assert_exact(fast, graded)


@pytest.mark.parametrize('symmetric', [False, True])
@pytest.mark.parametrize('zero_point', [None, 3.3])
@pytest.mark.parametrize('granularity', ['tensor', 'channel'])
def test_uniform_without_grad_equals_the_autograd_path(symmetric, zero_point,
                                                       granularity):
    """Without autograd the uniform quantizer works in place and, for one
    integer zero point, clamps round(x/s) to [q_min − z, q_max − z]
    instead of adding and removing z; the values equal the autograd
    path's, also for a non-integer z (RepQ-ViT's z̃), huge and infinite
    inputs."""
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([3 * torch.randn(4, 500, generator=gen),
                   torch.tensor([[0.0, -0.0, 1e30, -1e30, float('inf'),
                                  -float('inf'), 0.013, -0.7]] * 4)], dim=1)
    q = UniformQuantizer(bits=4, symmetric=symmetric, granularity=granularity)
    q.observing = True
    q(x[:, :500])
    q.observing = False
    if zero_point is not None:
        q.set_qparams(q.scale, torch.full_like(q.zero_point, zero_point))
    fast = q(x)
    graded = q(x.clone().requires_grad_()).detach()
    assert_exact(fast, graded)
    assert fast.abs().max() < float('inf')


def test_parameters_refresh_once_when_observation_ends_without_fake_quant():
    """Observing with fake quantization off (parallel calibration), the
    parameters are unused: they are computed once, when observing ends,
    and equal those refreshed on every call with fake quantization on."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 50, generator=gen) for _ in range(3)]
    lazy = UniformQuantizer(bits=4, observer=dict(type='MSEObserver'))
    eager = UniformQuantizer(bits=4, observer=dict(type='MSEObserver'))
    sets = []
    real = lazy.set_qparams
    lazy.set_qparams = lambda *a: sets.append(1) or real(*a)
    lazy.enabled, lazy.observing, eager.observing = False, True, True
    for x in batches:
        assert_exact(lazy(x), x)
        eager(x)
    assert not sets and not lazy.calibrated
    lazy.observing = False
    assert len(sets) == 1
    assert_exact(lazy.scale, eager.scale)
    assert_exact(lazy.zero_point, eager.zero_point)
    lazy.observing = False  # nothing new observed: no refresh
    assert len(sets) == 1
