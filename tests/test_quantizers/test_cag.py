"""AHCPTQ's Channel-Aware Grouping (CAGQuantizer, progressive_groups,
kmeans): planted groups, per-channel limit, closed-form group ranges,
checkpoints, ONNX."""
import copy

import pytest
import torch
from torch import nn

import mmptq  # noqa: F401  (registration)
from mmptq.apis import quantize_model
from mmptq.quantizers import (CAGQuantizer, UniformQuantizer, kmeans,
                              progressive_groups)
from helpers import assert_onnx_runs_as_module, checkpoint_round_trip
from mmptq.registry import QUANTIZERS


def planted(seed=0):
    """60 channels in 3 planted groups of ranges about [−1, 1], [−4, 6],
    [0, 20] (jitter 0.05), shuffled; the truth numbered narrowest first."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor([-1.0] * 20 + [-4.0] * 20 + [0.0] * 20)
    hi = torch.tensor([1.0] * 20 + [6.0] * 20 + [20.0] * 20)
    lo = lo + 0.05 * torch.randn(60, generator=gen)
    hi = hi + 0.05 * torch.randn(60, generator=gen)
    perm = torch.randperm(60, generator=gen)
    truth = torch.tensor([0] * 20 + [1] * 20 + [2] * 20)
    return lo[perm], hi[perm], truth[perm]


def calibrated(batches, **kwargs):
    q = CAGQuantizer(**kwargs)
    q.observing = True
    for b in batches:
        q(b)
    q.observing = False
    return q


def test_registered_and_validated():
    assert QUANTIZERS.get('CAGQuantizer') is CAGQuantizer
    with pytest.raises(ValueError, match='groups'):
        CAGQuantizer(groups=0)
    with pytest.raises(ValueError, match='stages'):
        CAGQuantizer(stages=(8, 0))
    with pytest.raises(ValueError, match='k=5'):
        kmeans(torch.randn(3, 2), 5)


def test_recovers_a_planted_grouping():
    lo, hi, truth = planted()
    # each channel's min / max reached in the batch: the observer's range
    x = torch.stack([lo, hi, (lo + hi) / 2])
    q = calibrated([x], bits=4, groups=3)
    assert torch.equal(q.group, truth)
    # the channels sorted by group: contiguous, in group order
    assert torch.equal(q.group[q.perm], torch.sort(truth).values)


def test_group_range_is_the_union_of_its_channels():
    lo, hi, truth = planted()
    q = calibrated([torch.stack([lo, hi])], bits=4, groups=3)
    for g in range(3):
        g_lo, g_hi = lo[truth == g].min(), hi[truth == g].max()
        s = (g_hi.clamp(min=0) - g_lo.clamp(max=0)) / 15
        z = -torch.round(g_lo.clamp(max=0) / s)
        assert q.scale[g].item() == pytest.approx(s.item(), rel=1e-5)
        assert q.zero_point[g].item() == z.item()


def test_as_many_groups_as_channels_is_per_channel():
    torch.manual_seed(0)
    batches = [torch.randn(8, 5, 24) * torch.linspace(0.1, 5, 24)
               + torch.linspace(-1, 3, 24) for _ in range(3)]
    per_channel = UniformQuantizer(bits=4, granularity='channel', ch_axis=-1,
                                   observer=dict(type='AvgMinMaxObserver'))
    per_channel.observing = True
    for b in batches:
        per_channel(b)
    per_channel.observing = False
    for groups in (24, 100):
        q = calibrated(batches, bits=4, groups=groups)
        assert q.num_groups == 24
        x = torch.randn(8, 5, 24) * 3
        assert torch.equal(q(x), per_channel(x))


def test_progressive_stages():
    """Each stage clusters the previous stage's centres: with G = 1 every
    channel ends in group 0; a stage count >= the points is skipped; the
    k-means is deterministic."""
    lo, hi, truth = planted()
    points = torch.stack([lo, hi], 1)
    assert torch.equal(progressive_groups(points, 1),
                       torch.zeros(60, dtype=torch.long))
    assert torch.equal(progressive_groups(points, 3, stages=(100, 8)),
                       truth)
    a, _ = kmeans(points, 5, seed=1)
    b, _ = kmeans(points, 5, seed=1)
    assert torch.equal(a, b)


class Projections(nn.Module):

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.k_proj = nn.Linear(32, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.k_proj(self.norm(x)))


def wide_channels(model):
    """LayerNorm γ of very different magnitudes: ranges vary by channel."""
    with torch.no_grad():
        model.norm.weight.copy_(torch.logspace(-1, 1, 32))
        model.norm.bias.copy_(torch.linspace(-2, 2, 32))
    return model


def test_quantized_checkpoint_keeps_the_grouping(tmp_path):
    torch.manual_seed(0)
    model = wide_channels(Projections().eval())
    fresh = copy.deepcopy(model)
    data = [torch.randn(4, 10, 32) for _ in range(2)]
    cfg = dict(w_bits=4, a_bits=4, overrides=[dict(
        name=r'k_proj', act=dict(type='CAGQuantizer', groups=4))])
    _, summary = quantize_model(model, cfg, data)
    q = model.k_proj.input_quantizer
    assert isinstance(q, CAGQuantizer) and q.num_groups == 4
    assert len(set(q.group.tolist())) == 4
    checkpoint_round_trip(model, summary, fresh, tmp_path / 'q.pth')
    rq = fresh.k_proj.input_quantizer
    assert isinstance(rq, CAGQuantizer)
    assert torch.equal(rq.group, q.group) and torch.equal(rq.perm, q.perm)
    assert torch.equal(rq.scale, q.scale)
    assert torch.equal(rq.zero_point, q.zero_point)
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), model(data[0]))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_exports_as_exact_float_ops(tmp_path):
    """ONNX: the group's step and zero point gathered per channel, float
    ops reported not int8-accelerated, equal to the fake quantization."""

    from mmptq.export import export_qdq, plan_export
    torch.manual_seed(0)
    model = wide_channels(Projections().eval())
    x = torch.randn(4, 10, 32)
    cfg = dict(overrides=[dict(name='k_proj',
                               act=dict(type='CAGQuantizer'))])
    quantize_model(model, cfg, [x])
    rows = [r for r in plan_export(model) if r.quantizer == 'CAGQuantizer']
    assert len(rows) == 1 and rows[0].mode == 'float' and \
        rows[0].reason == 'not uniform'
    summary = export_qdq(model, (x, ), str(tmp_path / 'm.onnx'))
    assert [r.quantizer for r in summary.not_accelerated()] == \
        ['CAGQuantizer']
    q = model.k_proj.input_quantizer
    h = model.norm(x).detach()
    assert_onnx_runs_as_module(q, h, tmp_path / 'q.onnx')


def test_parallel_calibration_groups_once_at_the_end():
    """With fake quantization off (parallel calibration) the clustering
    runs once, when observing ends, on the final ranges: the grouping of
    clustering after every batch."""
    lo, hi, truth = planted()
    batches = [torch.stack([lo, hi]), torch.stack([lo * 1.1, hi * 0.9])]
    every = calibrated(batches, bits=4, groups=3)
    calls = []
    q = CAGQuantizer(bits=4, groups=3)
    orig = q.channel_groups
    q.channel_groups = lambda lo, hi: calls.append(1) or orig(lo, hi)
    q.enabled, q.observing = False, True
    for b in batches:
        q(b)
    assert not calls and not q.calibrated
    q.observing, q.enabled = False, True
    assert len(calls) == 1
    assert torch.equal(q.group, every.group)
    assert torch.equal(q.scale, every.scale)
