"""PTQ4RIS's Reorder-based Outlier-Retained Quantization
(OutlierReorderQuantizer, outlier_groups, fold_reorder)."""
import copy

import pytest
import torch
from torch import nn

import mmptq  # noqa: F401  (registration)
from mmptq.apis import quantize_model
from mmptq.quantizers import (OutlierReorderQuantizer, fold_reorder,
                              outlier_groups)
from helpers import assert_onnx_runs_as_module, checkpoint_round_trip
from mmptq.registry import QUANTIZERS

#: channel maxima: 1000 × 1, 30 × 20, 2 × 100. By hand: τ_0 = mean + 3·std
#: of all = 1.744 + 3·5.38 = 17.9 → the 1s; of the rest, 25 + 3·19.67 =
#: 84.0 → the 20s; the two 100s have std 0: nothing above, last group
PLANTED = torch.cat([torch.ones(1000), torch.full((30, ), 20.0),
                     torch.full((2, ), 100.0)])


def planted_input(stat, tokens=4):
    """(tokens, C) input whose channel c has max stat[c], min −stat[c]/2."""
    x = torch.zeros(tokens, stat.numel())
    x[0], x[1] = stat, -stat / 2
    return x


def calibrated(stat, bits=4, **kwargs):
    q = OutlierReorderQuantizer(bits=bits, **kwargs)
    q.observing = True
    q(planted_input(stat))
    q.observing = False
    return q


def test_registered_and_validated():
    assert QUANTIZERS.get('OutlierReorderQuantizer') is \
        OutlierReorderQuantizer
    with pytest.raises(ValueError, match='max_groups'):
        OutlierReorderQuantizer(max_groups=0)


def test_planted_outlier_channels_form_three_groups():
    group = outlier_groups(PLANTED)
    expected = torch.tensor([0] * 1000 + [1] * 30 + [2] * 2)
    assert torch.equal(group, expected)


def test_above_the_last_threshold_is_the_last_group():
    """With N = 2 the 100s are above the only threshold: the reference
    would put them in group 0; they are in group 1 with the 20s."""
    group = outlier_groups(PLANTED, max_groups=2)
    assert torch.equal(group, torch.tensor([0] * 1000 + [1] * 32))
    assert torch.equal(outlier_groups(PLANTED, max_groups=1),
                       torch.zeros(1032, dtype=torch.long))


def test_single_value_left_stops_without_nan():
    """One channel of 100 left after two splits: std of one value is NaN
    (the reference's threshold); here it is the last group."""
    stat = torch.cat([torch.ones(1000), torch.full((30, ), 20.0),
                      torch.tensor([100.0])])
    group = outlier_groups(stat)
    assert torch.equal(group, torch.tensor([0] * 1000 + [1] * 30 + [2]))


def test_group_params_closed_form_and_forward():
    q = calibrated(PLANTED, bits=4)
    assert q.num_groups == 3
    # group g: range [−m_g/2, m_g]: s = 1.5·m_g/15, z = round(0.5·m_g/s) = 5
    m = torch.tensor([1.0, 20.0, 100.0])
    torch.testing.assert_close(q.scale, 1.5 * m / 15)
    torch.testing.assert_close(q.zero_point, torch.full((3, ), 5.0))
    assert torch.equal(q.perm, torch.arange(1032))  # already sorted
    x = torch.tensor([[0.33, 13.0, 61.0]]).expand(2, 3)
    idx = torch.tensor([0, 1000, 1030])
    xin = torch.zeros(2, 1032)
    xin[:, idx] = x
    out = q(xin)[:, idx]
    s = q.scale
    want = (torch.clamp(torch.round(x / s) + 5, 0, 15) - 5) * s
    torch.testing.assert_close(out, want)
    assert want[0, 0].item() == pytest.approx(0.3)  # 3 steps of 0.1


def test_perm_makes_groups_contiguous():
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(1032, generator=g)
    q = calibrated(PLANTED[order])
    assert sorted(q.perm.tolist()) == list(range(1032))
    assert (q.group[q.perm].diff() >= 0).all()
    assert torch.equal(q.group, outlier_groups(PLANTED)[order])


def test_fold_into_linear_producer_keeps_fp_output():
    torch.manual_seed(0)
    producer, consumer = nn.Linear(8, 16), nn.Linear(16, 4)
    x = torch.randn(5, 8)
    want = consumer(nn.functional.gelu(producer(x)))
    perm = torch.randperm(16)
    fold_reorder(perm, consumer, producer)
    got = consumer(nn.functional.gelu(producer(x)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(perm.float(), torch.arange(16.0))


def test_fold_into_layernorm_keeps_fp_output():
    """γ, β permuted; the LayerNorm reads its input in the new order."""
    torch.manual_seed(0)
    norm, consumer = nn.LayerNorm(16), nn.Linear(16, 4)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(5, 16)
    want = consumer(norm(x))
    perm = torch.randperm(16)
    fold_reorder(perm, consumer, norm)
    got = consumer(norm(x[:, perm]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fold_with_the_quantizer_keeps_quantized_output():
    torch.manual_seed(0)
    producer, consumer = nn.Linear(8, 32), nn.Linear(32, 4)
    with torch.no_grad():
        producer.weight[[3, 17, 25]] *= 40  # outlier channels
    x = torch.randn(64, 8)
    q = OutlierReorderQuantizer(bits=4)
    q.observing = True
    q(producer(x).detach())
    q.observing = False
    assert q.num_groups > 1
    with torch.no_grad():
        want = consumer(q(producer(x)))
        fold_reorder(q.perm, consumer, producer, quantizer=q)
        got = consumer(q(producer(x)))
    assert (q.group.diff() >= 0).all()
    assert torch.equal(q.perm, torch.arange(32))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class TextLinears(nn.Module):

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(16, 32)
        self.out = nn.Linear(32, 8)

    def forward(self, x):
        return self.out(nn.functional.gelu(self.dense(x)))


def test_quantized_checkpoint_saves_and_restores_groups(tmp_path):
    torch.manual_seed(0)
    model = TextLinears().eval()
    with torch.no_grad():
        model.dense.weight[[2, 9]] *= 30
    fresh = copy.deepcopy(model)
    data = [torch.randn(4, 16) for _ in range(2)]
    cfg = dict(w_bits=4, a_bits=4, overrides=[dict(
        name='out', act=dict(type='OutlierReorderQuantizer', max_groups=4))])
    _, summary = quantize_model(model, cfg, data)
    q = model.out.input_quantizer
    assert isinstance(q, OutlierReorderQuantizer) and q.num_groups > 1
    checkpoint_round_trip(model, summary, fresh, tmp_path / 'q.pth')
    rq = fresh.out.input_quantizer
    assert torch.equal(rq.group, q.group) and torch.equal(rq.perm, q.perm)
    assert torch.equal(rq.scale, q.scale)
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), model(data[0]))


def test_export_plan_is_float():
    from mmptq.export import plan_export
    torch.manual_seed(0)
    model = TextLinears().eval()
    cfg = dict(act=dict(type='OutlierReorderQuantizer'))
    quantize_model(model, cfg, [torch.randn(4, 16)])
    rows = [r for r in plan_export(model)
            if r.quantizer == 'OutlierReorderQuantizer']
    assert len(rows) == 2
    assert all(r.mode == 'float' and r.reason == 'not uniform'
               for r in rows)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_exports_as_exact_float_ops(tmp_path):
    """ONNX: the group's step and zero point gathered per channel, float
    ops that reproduce the fake quantization."""

    from mmptq.export import export_qdq
    torch.manual_seed(0)
    model = TextLinears().eval()
    x = torch.randn(4, 16)
    cfg = dict(overrides=[dict(
        name='out', act=dict(type='OutlierReorderQuantizer'))])
    quantize_model(model, cfg, [x])
    path = str(tmp_path / 'rorq.onnx')
    summary = export_qdq(model, (x, ), path)
    slow = summary.not_accelerated()
    assert [r.quantizer for r in slow] == ['OutlierReorderQuantizer']
    assert 'not int8-accelerated (1)' in summary.table()
    # the float quantizer alone, exported and run: equal to the module
    q = model.out.input_quantizer
    h = model.dense(x).detach()
    assert_onnx_runs_as_module(q, h, tmp_path / 'q.onnx')
