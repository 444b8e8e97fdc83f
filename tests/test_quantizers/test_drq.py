"""PTQ4RIS's Dual-Region Quantization (DualRegionQuantizer)."""
import copy

import pytest
import torch

import mmptq  # noqa: F401  (registration)
from mmptq.apis import quantize_model
from mmptq.quantizers import DualRegionQuantizer
from mmptq.quantizers.drq import GELU_MIN, gelu_steps, softmax_splits
from mmptq.registry import OBSERVERS, QUANTIZERS
from toy_models import TinyViT


def frozen(region, bits, low, high, split):
    q = DualRegionQuantizer(bits=bits, region=region)
    scale = torch.tensor([low, high])
    q.set_qparams(scale, torch.zeros(2))
    q.split = torch.tensor(split)
    return q


def test_registered():
    assert QUANTIZERS.get('DualRegionQuantizer') is DualRegionQuantizer
    assert OBSERVERS.get('RegionSearchObserver') is not None
    with pytest.raises(ValueError, match='region'):
        DualRegionQuantizer(region='relu')
    with pytest.raises(ValueError, match='observer'):
        DualRegionQuantizer(observer=dict(type='MinMaxObserver'))


def test_softmax_regions_closed_form():
    # b = 4: n = 8 codes per region; t = 1/4: Δ_l = 1/28, Δ_h = 1/7
    q = frozen('softmax', 4, 0.25 / 7, 1 / 7, 0.25)
    x = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.9, 1.0])
    expected = torch.tensor([0.0, 3 / 28, 6 / 28, 2 / 7, 6 / 7, 1.0])
    torch.testing.assert_close(q(x), expected)
    # the low region saturates at 7·Δ_l = t: its top code
    assert q(torch.tensor([0.249])).item() == pytest.approx(7 / 28)


def test_each_value_on_its_own_region_not_the_sum():
    """The reference adds both grids' outputs: t = 1/4 gives every value
    below t an extra round(7/4)/7 = 2/7 and every value above t an extra
    t; DRQ chooses one region per value."""
    n1, t = 7, 0.25
    q = frozen('softmax', 4, t / n1, 1 / n1, t)
    x = torch.tensor([0.1, 0.6])
    low = (x.clamp(0, t) / (t / n1)).round().clamp(0, n1) * (t / n1)
    high = (x.clamp(t, 1) * n1).round().clamp(0, n1) / n1
    reference = low + high
    ours = q(x)
    torch.testing.assert_close(ours, torch.tensor([3 / 28, 4 / 7]))
    torch.testing.assert_close(reference - ours, torch.tensor([2 / 7, t]))


def test_gelu_negative_and_positive_steps():
    # b = 4: n = 8; Δ_− = 0.16997/8 fixed, codes −8..0; Δ_+ = 0.1, codes 0..7
    q = frozen('gelu', 4, GELU_MIN / 8, 0.1, 0.0)
    d = GELU_MIN / 8
    x = torch.tensor([-0.17, -0.1, -0.001, 0.0, 0.26, 0.5, 2.0])
    expected = torch.tensor([-8 * d, -5 * d, 0.0, 0.0, 0.3, 0.5, 0.7])
    torch.testing.assert_close(q(x), expected)


def test_split_search_picks_the_exact_power_of_two():
    """Values on the t = 1/8 grids (j/56 below 1/8, j/7 above): only the
    split 2^-3 quantizes them without error."""
    x = torch.cat([torch.arange(7) / 56, torch.arange(1, 8) / 7])
    q = DualRegionQuantizer(bits=4, region='softmax')
    q.observing = True
    out = q(x.reshape(2, 7))
    rows = q.search(x)
    assert rows[:, 1].tolist() == softmax_splits().tolist()
    assert int(rows[:, 0].argmin()) == 3 and rows[3, 0] < 1e-12
    assert (rows[torch.arange(20) != 3, 0] > 1e-5).all()
    assert q.split.item() == 0.125
    torch.testing.assert_close(q.scale, torch.tensor([0.125 / 7, 1 / 7]))
    torch.testing.assert_close(out, x.reshape(2, 7))


def test_softmax_search_scores_the_error_after_v():
    torch.manual_seed(0)
    p = torch.randn(2, 4, 6, 6).mul(3).softmax(-1)
    v = torch.randn(2, 4, 6, 5)
    q = DualRegionQuantizer(bits=4, region='softmax')
    rows = q.search(p, v)
    for k in (0, 5, 12):
        t = 2.0**-k
        xq = frozen('softmax', 4, t / 7, 1 / 7, t)(p)
        want = ((xq @ v - p @ v)**2).mean()
        assert rows[k, 0].item() == pytest.approx(want.item(), rel=1e-5)


def test_gelu_search_and_batches_average():
    """Δ_+ candidates from the first batch's max (PTQ4ViT's α grid); the
    winner minimises the mean over batches of mean (x̂ − x)²."""
    torch.manual_seed(0)
    batches = [torch.nn.functional.gelu(torch.randn(64, 16) * s)
               for s in (1.0, 2.0)]
    q = DualRegionQuantizer(bits=4, region='gelu')
    q.observing = True
    for b in batches:
        q(b)
    cands = gelu_steps(float(batches[0].max()), 4)
    assert torch.allclose(q.observer.hi, cands)
    assert cands[0].item() == pytest.approx(
        0.01 * batches[0].max().item() / 7.5)
    errors = []
    for c in cands:
        fq = frozen('gelu', 4, GELU_MIN / 8, float(c), 0.0)
        errors.append(sum(((fq(b) - b)**2).mean() for b in batches) / 2)
    # the observer holds the mean over the batches of each candidate's error
    torch.testing.assert_close(q.observer.lo, torch.stack(errors),
                               rtol=1e-4, atol=1e-9)
    best = int(torch.stack(errors).argmin())
    assert q.scale[1].item() == pytest.approx(cands[best].item())
    assert q.scale[0].item() == pytest.approx(GELU_MIN / 8)
    assert q.split.item() == 0.0


def test_quantize_model_and_restore():
    from mmptq.core.restore import quant_meta, restore_quantized
    torch.manual_seed(0)
    model = TinyViT().eval()
    fresh = copy.deepcopy(model)
    data = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    cfg = dict(attn=dict(softmax=dict(type='DualRegionQuantizer')),
               overrides=[dict(name=r'(.*\.)?mlp\.2',
                               act=dict(type='DualRegionQuantizer',
                                        region='gelu'))])
    _, summary = quantize_model(model, cfg, data)
    drq = [m for m in model.modules() if isinstance(m, DualRegionQuantizer)]
    assert {m.region for m in drq} == {'softmax', 'gelu'}
    assert all(m.observer is None and m.scale.numel() == 2 for m in drq)
    restore_quantized(fresh, quant_meta(summary))
    fresh.load_state_dict(model.state_dict(), strict=True)
    splits = [float(m.split) for m in fresh.modules()
              if isinstance(m, DualRegionQuantizer)]
    assert splits == [float(m.split) for m in drq]
    assert any(s > 0 for s in splits)
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), model(data[0]))


def test_export_plan_is_float():
    from mmptq.export import plan_export
    torch.manual_seed(0)
    model = TinyViT().eval()
    cfg = dict(attn=dict(softmax=dict(type='DualRegionQuantizer')))
    quantize_model(model, cfg, [torch.randn(2, 3, 16, 16)])
    rows = [r for r in plan_export(model)
            if r.quantizer == 'DualRegionQuantizer']
    assert rows and all(r.mode == 'float' and r.reason == 'not uniform'
                        for r in rows)
