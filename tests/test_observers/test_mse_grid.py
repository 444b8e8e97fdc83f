"""MSEGridObserver (QDrop's step × zero-point search) against brute force.

The brute force enumerates, for each row in float64, every step
s_j = (j/n)·R/K (j = 1..n, R = max(x,0) − min(x,0), K = q_max − q_min)
and every zero point z = q_min..q_max, quantizes with
x̂ = s·(clamp(round(x/s) + z, q_min, q_max) − z) and keeps the first
(j, z) with the lowest mean |x − x̂|^p. It has no shortcut for one-signed
rows.
"""
import numpy as np
import pytest
import torch

import mmptq  # noqa: F401  (registration)
import mmptq.observers.search as obs_search
from mmptq.observers import MSEGridObserver
from mmptq.quantizers import Log2Quantizer, UniformQuantizer
from mmptq.registry import OBSERVERS, build_checked

#: relative slack between the observer's float32 scores and float64
REL = 1e-5


def calibrate(quantizer, *batches):
    quantizer.observing = True
    for batch in batches:
        quantizer(batch)
    quantizer.observing = False
    return quantizer


def grid_quantizer(bits=4, p=2.4, **kwargs):
    return UniformQuantizer(
        bits=bits,
        granularity='channel',
        observer=dict(type='MSEGridObserver', p=p),
        **kwargs)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def gaussian_rows(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def outlier_rows(rows, cols, seed, low=6.0, high=12.0):
    """N(0, 1) rows, each with one element replaced by an outlier of
    magnitude U(low, high) and random sign at a random column."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen)
    col = torch.randint(cols, (rows, ), generator=gen)
    mag = low + (high - low) * torch.rand(rows, generator=gen)
    sign = torch.randint(2, (rows, ), generator=gen) * 2.0 - 1.0
    x[torch.arange(rows), col] = sign * mag
    return x


def one_signed_rows(cols, seed):
    """Rows ≥ 0, ≤ 0, all zero, and two of both signs."""
    x = gaussian_rows(5, cols, seed)
    x[0] = x[0].abs()
    x[1] = -x[1].abs()
    x[2] = 0.0
    return x


# ---------------------------------------------------------------------------
# brute force, float64
# ---------------------------------------------------------------------------
def quant_err(row, s, z, qmin, qmax, p):
    """mean |x − x̂|^p for arrays of steps s and zero points z (broadcast
    against the row along a new last axis)."""
    s, z = np.asarray(s, np.float64)[..., None], np.asarray(z, np.float64)[..., None]
    xq = s * (np.clip(np.round(row / s) + z, qmin, qmax) - z)
    return (np.abs(row - xq)**p).mean(axis=-1)


def brute_force_2d(row, bits, p, n=100, signed=False):
    """(step, zero point, error) of the first lowest (j, z), and the
    lowest error among (j, z) of another step or zero point."""
    row = row.double().numpy()
    qmin, qmax = (-2**(bits - 1), 2**(bits - 1) - 1) if signed else (0, 2**bits - 1)
    levels = qmax - qmin
    width = max(row.max(), 0.0) - min(row.min(), 0.0)
    steps = width * np.arange(1, n + 1) / n / levels
    zps = np.arange(qmin, qmax + 1)
    err = quant_err(row, steps[:, None], zps[None, :], qmin, qmax, p)
    flat = err.ravel()
    best = int(np.argmin(flat))  # first occurrence: (j, z) order
    j, m = divmod(best, len(zps))
    runner_up = np.delete(flat, best).min()
    return steps[j], float(zps[m]), flat[best], runner_up


def brute_force_1d(row, bits, p, n=100):
    """Symmetric signed: steps 2·t_j/K, t_j = (j/n)·max|x|, z = 0."""
    row = row.double().numpy()
    qmin, qmax = -2**(bits - 1), 2**(bits - 1) - 1
    steps = 2 * np.abs(row).max() * np.arange(1, n + 1) / n / (qmax - qmin)
    err = quant_err(row, steps, np.zeros_like(steps), qmin, qmax, p)
    best = int(np.argmin(err))
    return steps[best], err[best], np.delete(err, best).min()


def chosen_err(row, quantizer, r, p):
    """float64 error of row r with the quantizer's (scale, zero_point)."""
    return float(quant_err(row.double().numpy(), quantizer.scale[r].item(),
                           quantizer.zero_point[r].item(), quantizer.quant_min,
                           quantizer.quant_max, p))


def assert_matches_brute_force_2d(x, q, bits, p, signed=False):
    """Every row's error is the brute-force minimum (up to float32
    scoring); where the minimum is clear (runner-up > REL above), the
    step and zero point are the brute force's. Returns the clear rows."""
    clear = 0
    for r in range(x.shape[0]):
        if x[r].abs().max() == 0:  # [0, 0]: the smallest step, exact
            assert chosen_err(x[r], q, r, p) == 0.0
            continue
        step, zp, best, runner_up = brute_force_2d(x[r], bits, p, signed=signed)
        got = chosen_err(x[r], q, r, p)
        assert got <= best * (1 + REL) + 1e-30, (r, got, best)
        if runner_up > best * (1 + 10 * REL):
            clear += 1
            assert q.zero_point[r].item() == zp, (r, q.zero_point[r], zp)
            assert q.scale[r].item() == pytest.approx(step, rel=REL), r
    return clear


# ---------------------------------------------------------------------------
# the 2-D search
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('bits, p', [(4, 2.4), (3, 2.0), (2, 2.4)])
def test_random_rows_match_brute_force(bits, p):
    x = gaussian_rows(12, 200, seed=bits)
    q = calibrate(grid_quantizer(bits, p), x)
    assert assert_matches_brute_force_2d(x, q, bits, p) >= 10


@pytest.mark.parametrize('bits', [4, 3])
def test_outlier_rows_match_brute_force(bits):
    x = outlier_rows(16, 256, seed=10 + bits)
    q = calibrate(grid_quantizer(bits), x)
    assert assert_matches_brute_force_2d(x, q, bits, 2.4) >= 14


def test_signed_asymmetric_grid_matches_brute_force():
    """q_min = −2^(b−1): the same ranges, zero points q_min..q_max."""
    x = outlier_rows(8, 128, seed=21)
    q = calibrate(grid_quantizer(4, signed=True), x)
    assert (q.quant_min, q.quant_max) == (-8, 7)
    assert assert_matches_brute_force_2d(x, q, 4, 2.4, signed=True) >= 7


def test_one_signed_rows_match_brute_force():
    """Rows ≥ 0 / ≤ 0 are searched at one zero point (q_min / q_max): the
    brute force over every zero point finds nothing better."""
    x = one_signed_rows(150, seed=30)
    q = calibrate(grid_quantizer(4), x)
    assert_matches_brute_force_2d(x, q, 4, 2.4)
    assert q.zero_point[0].item() == q.quant_min
    assert q.zero_point[1].item() == q.quant_max


@pytest.mark.parametrize('part', [slice(0, 3), slice(0, 1), slice(1, 2),
                                  slice(2, 3), slice(3, 5), slice(4, 5)])
def test_rows_are_independent(part):
    """A row's range does not depend on the other rows (all one-signed
    rows take the short path, a mixed batch the full grid)."""
    x = one_signed_rows(100, seed=31)
    full = MSEGridObserver()
    full.update(x, UniformQuantizer(bits=3))
    alone = MSEGridObserver()
    alone.update(x[part], UniformQuantizer(bits=3))
    assert torch.equal(alone.lo, full.lo[part])
    assert torch.equal(alone.hi, full.hi[part])


def test_rows_on_a_grid_are_exact():
    """Rows whose values lie on a 4-bit grid of step 1 ([−14, 1], [−5, 10])
    are quantized exactly: that needs the last step (j = n). The third row
    ([−15, 0] and one 0.25) is best at the last zero point, z = q_max."""
    x = torch.stack([
        torch.cat([torch.arange(-14.0, 2.0), torch.tensor([0.5])]),
        torch.cat([torch.arange(-5.0, 11.0), torch.tensor([0.0])]),
        torch.cat([torch.arange(-15.0, 1.0), torch.tensor([0.25])]),
    ])
    x[0, -1] = 0.0
    q = calibrate(grid_quantizer(4), x)
    torch.testing.assert_close(q.scale[:2], torch.ones(2))
    assert q.zero_point.tolist() == [14.0, 5.0, 15.0]
    torch.testing.assert_close(q(x)[:2], x[:2], rtol=0, atol=0)
    assert_matches_brute_force_2d(x, q, 4, 2.4)


@pytest.mark.parametrize('bits, zp', [(2, 1.0), (3, 3.0)])
def test_ties_keep_the_first_candidate(bits, zp):
    """A row symmetric about 0 scores z and K − z equally (K odd): the
    first in (step, zero point) order is kept, as in the brute force."""
    x = torch.tensor([[-1.0, 0.0, 1.0]])
    step, bf_zp, best, runner_up = brute_force_2d(x[0], bits, 2.4)
    assert runner_up == best and bf_zp == zp
    q = calibrate(grid_quantizer(bits), x)
    assert q.zero_point.item() == zp
    assert q.scale.item() == pytest.approx(step, rel=REL)


# ---------------------------------------------------------------------------
# against MSEObserver (1-D shrink of [min, max])
# ---------------------------------------------------------------------------
def mse_and_grid_errors(x, bits, p, symmetric=False):
    errs = []
    for obs in ('MSEObserver', 'MSEGridObserver'):
        q = calibrate(
            UniformQuantizer(bits=bits, granularity='channel',
                             symmetric=symmetric,
                             observer=dict(type=obs, p=p)), x)
        errs.append(np.array(
            [chosen_err(x[r], q, r, p) for r in range(x.shape[0])]))
    return errs


@pytest.mark.parametrize('data', ['gaussian', 'outlier', 'one_signed'])
@pytest.mark.parametrize('p', [2.4, 2.0])
def test_never_worse_than_mse_observer(data, p):
    """With 100 steps both search the same scales; the grid adds every
    zero point, so its error is ≤ MSEObserver's on every row (up to float
    rounding of the step). On outlier rows it is lower on many rows."""
    x = dict(gaussian=gaussian_rows(32, 256, seed=40),
             outlier=outlier_rows(32, 256, seed=41),
             one_signed=one_signed_rows(256, seed=42))[data]
    mse, grid = mse_and_grid_errors(x, 4, p)
    assert (grid <= mse * (1 + REL)).all(), np.flatnonzero(grid > mse * (1 + REL))
    if data == 'outlier':
        assert (grid < mse * (1 - 0.01)).sum() >= 3


def test_symmetric_quantizer_searches_like_mse_observer():
    """Symmetric: QDrop's 1-D search [−t_j, t_j]; the same candidates as
    MSEObserver's α·[min, max] (a symmetric range depends on max|x|)."""
    x = outlier_rows(16, 256, seed=43)
    mse, grid = mse_and_grid_errors(x, 4, 2.4, symmetric=True)
    np.testing.assert_allclose(grid, mse, rtol=REL)


# ---------------------------------------------------------------------------
# the 1-D search
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('data', ['gaussian', 'outlier'])
def test_symmetric_quantizer_matches_brute_force_1d(data):
    x = (gaussian_rows(12, 200, seed=50)
         if data == 'gaussian' else outlier_rows(12, 200, seed=51))
    q = calibrate(grid_quantizer(4, symmetric=True), x)
    clear = 0
    for r in range(x.shape[0]):
        step, best, runner_up = brute_force_1d(x[r], 4, 2.4)
        got = chosen_err(x[r], q, r, 2.4)
        assert got <= best * (1 + REL), r
        if runner_up > best * (1 + 10 * REL):
            clear += 1
            assert q.scale[r].item() == pytest.approx(step, rel=REL), r
    assert clear >= 10


def test_log_quantizer_gets_the_1d_search():
    """No zero-point grid: candidates hi = t_j, scored by the quantizer."""
    gen = torch.Generator().manual_seed(52)
    x = torch.softmax(torch.randn(4, 64, generator=gen) * 3, dim=-1)
    q = calibrate(
        Log2Quantizer(bits=3, granularity='channel',
                      observer=dict(type='MSEGridObserver', p=2.0)), x)
    for r in range(4):
        his = [float(x[r].amax()) * j / 100 for j in range(1, 101)]
        errs = []
        for h in his:
            xq = Log2Quantizer(bits=3).fake_quant(
                x[r], torch.tensor(h), torch.tensor(0.0))
            errs.append(float((x[r] - xq).double().pow(2).mean()))
        best = min(range(100), key=lambda i: (errs[i], i))
        assert q.scale[r].item() == pytest.approx(his[best], rel=REL)


# ---------------------------------------------------------------------------
# framework: batches, chunks, registry, weight observer
# ---------------------------------------------------------------------------
def test_batches_average_the_winners():
    x1, x2 = outlier_rows(6, 100, seed=60), outlier_rows(6, 100, seed=61)
    q = UniformQuantizer(bits=4)
    both = MSEGridObserver()
    both.update(x1, q)
    both.update(x2, q)
    lo_hi = []
    for x in (x1, x2):
        one = MSEGridObserver()
        one.update(x, q)
        lo_hi.append(one.range())
    torch.testing.assert_close(both.lo, (lo_hi[0][0] + lo_hi[1][0]) / 2)
    torch.testing.assert_close(both.hi, (lo_hi[0][1] + lo_hi[1][1]) / 2)
    assert int(both.num_batches) == 2


def test_column_chunks_give_the_same_range(monkeypatch):
    x = outlier_rows(5, 300, seed=62)
    q = UniformQuantizer(bits=3)
    full = MSEGridObserver()
    full.update(x, q)
    monkeypatch.setattr(obs_search, 'CHUNK', 37)
    chunked = MSEGridObserver()
    chunked.update(x, q)
    torch.testing.assert_close(chunked.lo, full.lo, rtol=1e-6, atol=0)
    torch.testing.assert_close(chunked.hi, full.hi, rtol=1e-6, atol=0)


def test_number_of_candidates(monkeypatch):
    """n·(K+1) candidates for rows of both signs, n for one-signed rows
    and for a symmetric quantizer."""
    calls = []
    real = obs_search.lp_error

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(obs_search, 'lp_error', counting)
    x = gaussian_rows(3, 50, seed=63)
    for rows, quantizer, expected in [
        (x, UniformQuantizer(bits=3), 20 * 8),
        (x.abs(), UniformQuantizer(bits=3), 20),
        (torch.stack([x[0].abs(), -x[1].abs()]), UniformQuantizer(bits=3), 20),
        (x, UniformQuantizer(bits=3, symmetric=True), 20),
    ]:
        calls.clear()
        MSEGridObserver(num_candidates=20).update(rows, quantizer)
        assert len(calls) == expected


def test_registry_builds_it():
    obs = build_checked(OBSERVERS,
                        dict(type='MSEGridObserver', p=2.0, num_candidates=50),
                        'observer')
    assert isinstance(obs, MSEGridObserver)
    assert (obs.p, obs.num_candidates) == (2.0, 50)
    assert isinstance(
        build_checked(OBSERVERS, dict(type='mmptq.MSEGridObserver'), 'observer'),
        MSEGridObserver)
    with pytest.raises(ValueError, match='MSEGridObserver'):
        build_checked(OBSERVERS, dict(type='MSEGridObserverr'), 'observer')


@pytest.mark.parametrize('kwargs', [dict(p=0), dict(num_candidates=0),
                                    dict(num_candidates=2.5)])
def test_arguments_are_checked(kwargs):
    with pytest.raises(ValueError):
        MSEGridObserver(**kwargs)


@pytest.mark.parametrize('shape', [(6, 3, 3, 3), (10, 24)])
def test_per_channel_weight_observer(shape):
    """As the weight observer of a per-channel UniformQuantizer: one
    search per output channel; the fake-quantized weight uses them."""
    gen = torch.Generator().manual_seed(70)
    w = torch.randn(shape, generator=gen) * 0.1
    w.view(shape[0], -1)[:, 0] *= 20  # an outlier per channel
    q = calibrate(grid_quantizer(4), w)
    rows = w.reshape(shape[0], -1)
    assert q.scale.shape == (shape[0], )
    assert_matches_brute_force_2d(rows, q, 4, 2.4)
    err = (q(w) - w).double().abs().pow(2.4).reshape(shape[0], -1).mean(1)
    for r in range(shape[0]):
        best = brute_force_2d(rows[r], 4, 2.4)[2]
        assert err[r].item() <= best * (1 + REL), r
