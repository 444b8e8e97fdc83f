"""AHCPTQ's Hybrid Log-Uniform Quantization (HLUQuantizer, hybrid_quant):
grid, dead zone and split search against closed form, checkpoints, ONNX."""
import copy

import pytest
import torch
from torch import nn

import mmptq  # noqa: F401  (registration)
from mmptq.apis import quantize_model
from mmptq.nn.modules import QuantLinear
from mmptq.quantizers import HLUQuantizer, hybrid_quant
from helpers import assert_onnx_runs_as_module, checkpoint_round_trip
from mmptq.registry import QUANTIZERS
from toy_models import TinyViT

#: b = 4, m = −0.2, R = 3: s_l = 0.8, L = 4 log levels 0.8, 0.4, 0.2, 0.1;
#: U = 16 − 1 − 4 = 11 uniform levels 0.8 + k·0.2, k = 1..11 (s_u = 2.2/11)
M, S_LOG, S_UNI, L = -0.2, 0.8, 0.2, 4


def frozen(bits=4, m=M, s_log=S_LOG, s_uni=S_UNI, levels=L):
    q = HLUQuantizer(bits=bits)
    q.set_qparams(torch.tensor([s_log, s_uni]), torch.tensor([m]))
    q.log_levels = torch.tensor(levels)
    return q


def test_registered_and_validated():
    assert QUANTIZERS.get('HLUQuantizer') is HLUQuantizer
    with pytest.raises(ValueError, match='observer'):
        HLUQuantizer(observer=dict(type='MinMaxObserver'))
    with pytest.raises(ValueError, match='split_ratios'):
        HLUQuantizer(split_ratios=(0.1, 1.5))
    with pytest.raises(ValueError, match='log_fractions'):
        HLUQuantizer(log_fractions=())
    with pytest.raises(ValueError, match='b >= 3'):
        HLUQuantizer(bits=2)


def test_grid_closed_form():
    q = frozen()
    u = torch.tensor([0.3, 0.5, 0.8, 0.95, 1.49, 2.0, 3.0, 10.0])
    # log: round(−log2(u/0.8)) = 1, 1, 0; uniform: round((u − 0.8)/0.2)
    # = 1, 3 (3.45), 6, 11, 11 (clamped: the top level is m + R)
    want = torch.tensor([0.4, 0.4, 0.8, 1.0, 1.4, 2.0, 3.0, 3.0])
    torch.testing.assert_close(q(u + M), want + M)


def test_one_code_space_of_two_to_the_b_values():
    """A dense sweep hits exactly 2^b values: the dead zone, L log2
    levels, 2^b − 1 − L uniform levels ending at the range's top."""
    for bits, levels in ((3, 2), (4, 4), (5, 8)):
        uni = 2**bits - 1 - levels
        s_uni = (3.0 - S_LOG) / uni
        q = frozen(bits=bits, s_uni=s_uni, levels=levels)
        sweep = torch.linspace(M - 1, M + 4, 200001)
        values = torch.unique(q(sweep) - M)
        log = S_LOG * 2.0**-torch.arange(levels, dtype=torch.float32)
        top = S_LOG + s_uni * torch.arange(1, uni + 1, dtype=torch.float32)
        want = torch.sort(torch.cat([torch.zeros(1), log, top])).values
        assert values.numel() == 2**bits
        torch.testing.assert_close(values, want)
        assert values[-1].item() == pytest.approx(3.0)


def test_dead_zone():
    """û = 0 where round(−log2(u/s_l)) >= L, i.e. u < s_l·2^(−3.5) =
    0.0707 for L = 4; and for every u <= 0 (below the offset)."""
    q = frozen()
    edge = S_LOG * 2**-3.5
    u = torch.tensor([-1.0, 0.0, 0.5 * edge, 0.99 * edge, 1.01 * edge])
    want = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1])
    torch.testing.assert_close(q(u + M) - M, want)


def test_split_search_by_output_error():
    """Each batch scores every (s_l = r·R, L) on the running mean range by
    mean ((x̂ − x)·Wᵀ)², the errors are averaged over the batches and the
    winner's grid is set on the mean range."""
    torch.manual_seed(0)
    batches = [nn.functional.gelu(torch.randn(32, 16) * s)
               for s in (1.0, 3.0)]
    layer = QuantLinear.from_float(nn.Linear(16, 8))
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0, 4, 16))  # weights the tail
    q = HLUQuantizer(bits=4)
    q.bind_consumer(layer)
    q.observing = True
    for b in batches:
        q(b)
    q.observing = False
    lo1, hi1 = batches[0].min(), batches[0].max()
    lo = (lo1 + batches[1].min()) / 2
    hi = (hi1 + batches[1].max()) / 2
    errors = []
    for ratio, levels in q.candidates:
        total = 0.0
        for r_lo, r_hi, b in ((lo1, hi1, batches[0]), (lo, hi, batches[1])):
            s_log = (r_hi - r_lo) * ratio
            uni = 15 - levels
            xq = hybrid_quant(b, r_lo, s_log, (r_hi - r_lo - s_log) / uni,
                              levels, uni)
            total += ((xq - b) @ layer.weight.T).pow(2).mean()
        errors.append(total / 2)
    errors = torch.stack(errors)
    torch.testing.assert_close(q.observer.lo[1:], errors, rtol=1e-5,
                               atol=1e-9)
    ratio, levels = q.candidates[int(errors.argmin())]
    assert int(q.log_levels) == levels
    torch.testing.assert_close(q.zero_point, lo.reshape(1))
    torch.testing.assert_close(
        q.scale, torch.stack([(hi - lo) * ratio,
                              (hi - lo) * (1 - ratio) / (15 - levels)]))
    # the candidates: 3 split ratios x L = round(f·16), f = 1/8, 1/4, 1/2
    assert sorted({lv for _, lv in q.candidates}) == [2, 4, 8]


def test_quantize_model_binds_the_consumer_and_restores(tmp_path):
    torch.manual_seed(0)
    model = TinyViT().eval()
    fresh = copy.deepcopy(model)
    data = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    bound = []
    orig = HLUQuantizer.bind_consumer

    def spy(self, layer):
        bound.append(layer)
        orig(self, layer)

    HLUQuantizer.bind_consumer = spy
    try:
        cfg = dict(w_bits=4, a_bits=4, overrides=[dict(
            name=r'(.*\.)?mlp\.2', act=dict(type='HLUQuantizer'))])
        _, summary = quantize_model(model, cfg, data)
    finally:
        HLUQuantizer.bind_consumer = orig
    qs = [m for m in model.modules() if isinstance(m, HLUQuantizer)]
    assert len(qs) == 2 and len(bound) == 2
    assert all(layer.input_quantizer is q for layer, q in zip(bound, qs))
    assert all(q.observer is None and q.__dict__['_consumer'] is None
               for q in qs)  # freeze drops the consumer
    checkpoint_round_trip(model, summary, fresh, tmp_path / 'q.pth')
    restored = [m for m in fresh.modules() if isinstance(m, HLUQuantizer)]
    for a, b in zip(restored, qs):
        assert torch.equal(a.scale, b.scale)
        assert int(a.log_levels) == int(b.log_levels)
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), model(data[0]))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_exports_as_exact_float_ops(tmp_path):
    """ONNX: not a QDQ pair; reported not int8-accelerated; the float ops
    reproduce the fake quantization."""

    from mmptq.export import export_qdq, plan_export
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = torch.randn(1, 3, 16, 16)
    cfg = dict(overrides=[dict(name=r'(.*\.)?mlp\.2',
                               act=dict(type='HLUQuantizer'))])
    quantize_model(model, cfg, [x])
    rows = [r for r in plan_export(model) if r.quantizer == 'HLUQuantizer']
    assert len(rows) == 2 and all(
        r.mode == 'float' and r.reason == 'not uniform' for r in rows)
    summary = export_qdq(model, (x, ), str(tmp_path / 'm.onnx'))
    slow = {r.quantizer for r in summary.not_accelerated()}
    assert 'HLUQuantizer' in slow
    q = model.blocks[0].mlp[2].input_quantizer
    h = nn.functional.gelu(torch.randn(4, 64) * 2)
    assert_onnx_runs_as_module(q, h, tmp_path / 'q.onnx')
