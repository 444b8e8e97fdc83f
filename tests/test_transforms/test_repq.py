"""RepQ-ViT scale reparameterization: the closed form, exactness of the
folding, structure tracing of LayerNorm consumers, and the whole transform
on the Swin / ViT backbones of mmdet, mmseg and mmpretrain."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmptq.apis import quantize_model
from mmptq.nn import QuantLinear
from mmptq.transforms import fold_reparam, reparam_params, trace_norm_uses
from helpers import BACKBONES

W4A4_REPQ = dict(
    w_bits=4, a_bits=4,
    weight=dict(observer=dict(type='PercentileSearchObserver')),
    transforms=[dict(type='RepQReparam')])


def test_reparam_params_closed_form():
    """Δ̃ = mean Δ, z̃ = mean z (not rounded), r = Δ/Δ̃,
    b = min/r − miñ with min = (q_min − z)Δ."""
    scale = torch.tensor([0.1, 0.3, 0.2])
    zp = torch.tensor([3.0, 10.0, 0.0])
    s, z, r, b = reparam_params(scale, zp, quant_min=0)
    assert s.item() == pytest.approx(0.2)
    assert z.item() == pytest.approx(13 / 3)  # not rounded
    torch.testing.assert_close(r, torch.tensor([0.5, 1.5, 1.0]))
    lo = -zp * scale  # channel minima
    torch.testing.assert_close(b, lo / r - (-z * s))
    # x' = x / r − b maps every channel's range onto the same one
    levels = 15
    hi = lo + levels * scale
    torch.testing.assert_close(lo / r - b, torch.full((3, ), -z.item() * s))
    torch.testing.assert_close(hi / r - b,
                               torch.full((3, ), (levels - z.item()) * s))
    _, _, r0, b0 = reparam_params(scale, zp, 0, shift=False)
    torch.testing.assert_close(r0, r)
    assert (b0 == 0).all()


@pytest.mark.parametrize('bias', [True, False])
def test_fold_keeps_the_function(bias):
    torch.manual_seed(0)
    norm, lin1, lin2 = nn.LayerNorm(8), nn.Linear(8, 5, bias=bias), \
        nn.Linear(8, 3)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(4, 6, 8)
    ref = [lin1(norm(x)), lin2(norm(x))]
    r = torch.rand(8) * 3 + 0.1
    b = torch.randn(8)
    gamma, beta = norm.weight.detach().clone(), norm.bias.detach().clone()
    added = fold_reparam(norm, [lin1, lin2], r, b)
    assert added == ([] if bias else [lin1])
    y = norm(x)
    # the LayerNorm now outputs the reparameterized x' = LN(x) / r − b
    # (γ ← γ / r, β ← β / r − b), computed here from the original affine
    want_y = F.layer_norm(x, (8, ), gamma, beta, norm.eps) / r - b
    torch.testing.assert_close(y, want_y, rtol=1e-5, atol=1e-5)
    for lin, want in zip((lin1, lin2), ref):
        torch.testing.assert_close(lin(y), want, rtol=1e-5, atol=1e-5)


class Pairs(nn.Module):
    """ln_a → Linear directly; ln_b → view/permute/pad → Linear (padded);
    ln_c → two Linears; ln_d → Linear and a residual add; ln_e → transpose
    → Linear over tokens (in_features = tokens, not channels)."""

    def __init__(self, c: int = 8, n: int = 8) -> None:
        super().__init__()
        self.ln_a, self.ln_b, self.ln_c, self.ln_d, self.ln_e = (
            nn.LayerNorm(c) for _ in range(5))
        self.fa, self.fb, self.fc1, self.fc2, self.fd = (
            nn.Linear(c, c) for _ in range(5))
        self.fe = nn.Linear(n, n)

    def forward(self, x):
        b, n, c = x.shape
        out = self.fa(self.ln_a(x))
        y = self.ln_b(x).view(b, 2, n // 2, c).permute(0, 2, 1, 3)
        y = F.pad(y, (0, 0, 0, 1))
        out = out + self.fb(y).sum((1, 2))[:, None]
        z = self.ln_c(x)
        out = out + self.fc1(z) + self.fc2(z[:, 1:])[:, :1]
        d = self.ln_d(x)
        out = out + self.fd(d) + d
        e = self.fe(self.ln_e(x).transpose(1, 2)).transpose(1, 2)
        return out + e


def test_trace_norm_uses():
    model = Pairs().eval()
    uses = trace_norm_uses(model, lambda: model(torch.randn(2, 8, 8)))
    assert uses['ln_a'].linears == ['fa'] and not uses['ln_a'].reason
    assert not uses['ln_a'].padded
    assert uses['ln_b'].linears == ['fb'] and uses['ln_b'].padded
    assert not uses['ln_b'].reason
    assert uses['ln_c'].linears == ['fc1', 'fc2'] and not uses['ln_c'].reason
    assert 'also feeds' in uses['ln_d'].reason
    assert 'is not its output rows' in uses['ln_e'].reason


def test_repq_on_toy_pairs_is_exact_and_per_tensor():
    torch.manual_seed(0)
    model = Pairs().eval()
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):  # make the channels differ
            nn.init.normal_(m.weight, std=2)
            nn.init.normal_(m.bias, std=2)
    fp = copy.deepcopy(model)
    data = [torch.randn(2, 8, 8) for _ in range(3)]
    _, summary = quantize_model(model, W4A4_REPQ, data)
    modes = {t['target']: t['mode'] for t in summary.transforms}
    assert modes == {'ln_a': 'scale+shift', 'ln_b': 'scale only (consumer '
                     'pads)', 'ln_c': 'scale+shift', 'ln_d': 'skipped',
                     'ln_e': 'skipped'}
    for name in ('fa', 'fb', 'fc1', 'fc2'):
        q = model.get_submodule(name).input_quantizer
        assert q.granularity == 'tensor' and q.scale.numel() == 1
    # z̃ is the (unrounded) mean of the per-channel zero points
    assert model.fa.input_quantizer.zero_point.item() % 1 != 0
    # consumers of one norm share the quantizer parameters
    assert torch.equal(model.fc1.input_quantizer.scale,
                       model.fc2.input_quantizer.scale)
    assert_fp_unchanged(model, fp, data[0])


class ScaledInput(nn.Linear):
    """A Linear subclass with its own forward: F.linear of 2x its input."""

    def forward(self, x):
        return F.linear(2 * x, self.weight, self.bias)


class ScaledOutput(nn.Linear):
    """A Linear subclass with its own forward: 2x F.linear of its input."""

    def forward(self, x):
        return 2 * F.linear(x, self.weight, self.bias)


def test_repq_on_linears_with_their_own_forward():
    """Folding is exact where F.linear sees the norm output itself
    (ScaledOutput: folded, FP function kept); an op on the input first
    (ScaledInput) makes the trace skip the pair."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(8), ScaledOutput(8, 8),
                          nn.LayerNorm(8), ScaledInput(8, 8)).eval()
    for m in (model[0], model[2]):
        nn.init.normal_(m.weight, std=2)
        nn.init.normal_(m.bias, std=2)
    fp = copy.deepcopy(model)
    data = [torch.randn(2, 4, 8) for _ in range(2)]
    _, summary = quantize_model(model, W4A4_REPQ, data)
    assert summary.own_forward_counts() == {'quantized': 2}
    modes = {t['target']: (t['mode'], t['reason'])
             for t in summary.transforms}
    assert modes == {'0': ('scale+shift', ''),
                     '2': ('skipped', "also feeds ['mul']")}
    assert model[1].input_quantizer.scale.numel() == 1
    assert_fp_unchanged(model, fp, data[0])


def assert_fp_unchanged(model, fp, *inputs, tol=1e-5):
    for q in model.modules():
        if hasattr(q, 'enabled') and hasattr(q, 'observer'):
            q.enabled = False
    with torch.no_grad():
        got, want = model(*inputs), fp(*inputs)
    got = got if isinstance(got, (list, tuple)) else [got]
    want = want if isinstance(want, (list, tuple)) else [want]
    for g, w in zip(got, want):
        rel = ((g - w).norm() / w.norm()).item()
        assert rel < tol, rel


def test_repq_reduces_error_on_channel_outliers():
    """The effect it exists for: post-LN channels with very different
    ranges. W8A4 with the reparameterization beats plain per-tensor."""
    torch.manual_seed(0)

    class Block(nn.Module):

        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(32)
            self.fc = nn.Linear(32, 16)

        def forward(self, x):
            return self.fc(self.norm(x))

    model = Block().eval()
    with torch.no_grad():
        model.norm.weight.copy_(torch.logspace(-1, 1, 32))
        model.norm.bias.copy_(torch.linspace(-3, 3, 32))
    data = [torch.randn(16, 32) for _ in range(4)]
    ref = model(data[0]).detach()
    errs = {}
    for name, transforms in (('plain', []),
                             ('repq', [dict(type='RepQReparam')])):
        q, _ = quantize_model(copy.deepcopy(model), dict(
            w_bits=8, a_bits=4, transforms=transforms), data)
        with torch.no_grad():
            errs[name] = (q(data[0]) - ref).pow(2).mean().item()
    assert errs['repq'] < 0.5 * errs['plain'], errs




@pytest.mark.parametrize('name', list(BACKBONES))
def test_repq_keeps_fp_output_of_backbones(name):
    scope, cfg, shape = BACKBONES[name]
    registry = pytest.importorskip(f'{scope}.registry')
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    torch.manual_seed(0)
    model = registry.MODELS.build(cfg)
    model.eval()
    for m in model.modules():  # trained-like, channel-varying affines
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.5)
            nn.init.normal_(m.bias, 0.0, 0.5)
    fp = copy.deepcopy(model)
    x = torch.randn(*shape)
    _, summary = quantize_model(model, W4A4_REPQ, [x, torch.randn(*shape)])
    folded = [t for t in summary.transforms if t['mode'] != 'skipped']
    # every block has a norm before attention and one before the MLP
    blocks = sum(1 for m in fp.modules()
                 if type(m).__name__ in ('SwinBlock', 'TransformerEncoderLayer'))
    assert len(folded) >= 2 * blocks > 0, summary.transforms
    for t in folded:
        for c in t['consumers']:
            q = model.get_submodule(c).input_quantizer
            assert isinstance(model.get_submodule(c), QuantLinear)
            assert q.granularity == 'tensor' and q.scale.numel() == 1
    if 'padded' in name:
        assert any(t['mode'].startswith('scale only') for t in folded)
    assert_fp_unchanged(model, fp, x)


def test_quantized_checkpoint_round_trip():
    """A RepQ-quantized model saved and restored (without calibrating)
    gives the same outputs, including the bias RepQ added to a Linear that
    had none."""
    from mmptq.core.restore import quant_meta, restore_quantized

    class Block(nn.Module):

        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(16)
            self.fc = nn.Linear(16, 8, bias=False)

        def forward(self, x):
            return self.fc(self.norm(x))

    torch.manual_seed(0)
    model = Block().eval()
    fresh = copy.deepcopy(model)
    data = [torch.randn(4, 16) for _ in range(2)]
    _, summary = quantize_model(model, W4A4_REPQ, data)
    assert summary.transforms[0]['bias_added'] == ['fc']
    state = model.state_dict()
    restore_quantized(fresh, quant_meta(summary))
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), model(data[0]))


@pytest.mark.parametrize('with_norm', [True, False])
@pytest.mark.parametrize('recalibrate', [True, False])
def test_second_pass_only_when_something_was_folded(with_norm, recalibrate):
    """``recalibrate`` feeds the calibration data again after the fold;
    without any folded LayerNorm (a CNN, a model without LN -> Linear) no
    quantizer moved, and that pass would be wasted."""
    layers = [nn.LayerNorm(8)] if with_norm else [nn.Identity()]
    model = nn.Sequential(*layers, nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 4)).eval()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    data = [torch.randn(2, 3, 8) for _ in range(5)]
    cfg = copy.deepcopy(W4A4_REPQ)
    cfg['transforms'] = [dict(type='RepQReparam', recalibrate=recalibrate)]
    _, summary = quantize_model(model, cfg, data)
    folded = [t for t in summary.transforms if t['mode'] != 'skipped']
    assert len(folded) == int(with_norm)
    # discover + the LayerNorm trace + one pass (+ one more after a fold,
    # whose first pass ends each forward after the Linear's input but the
    # first: the root's hook sees only that one)
    passes = (1 + len(data)) if with_norm and recalibrate else len(data)
    assert len(calls) == 2 + passes


class LateTail(nn.Module):
    """Two post-LayerNorm Linears, then a tail of quantized ops that no
    fold needs."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(8), nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.tail = nn.Sequential(nn.GELU(), nn.Linear(8, 16), nn.ReLU(),
                                  nn.Linear(16, 4))

    def forward(self, x):
        x = x + self.fc1(self.ln1(x))
        return self.tail(self.fc2(self.ln2(x)))


def test_first_pass_cut_after_the_last_fold_input_changes_nothing(
        monkeypatch):
    """With ``recalibrate`` the first pass ends each forward (but the
    first) after the last post-LayerNorm input: what comes after is
    searched again in the second pass, so the quantized model is
    bit-identical to the one from the whole first pass, and the tail runs
    only in the first forward of that pass."""
    from mmptq.transforms import RepQReparam
    torch.manual_seed(0)
    model = LateTail().eval()
    for ln in (model.ln1, model.ln2):  # channel spread: folds that matter
        nn.init.uniform_(ln.weight, 0.1, 10.0)
    data = [torch.randn(2, 5, 8) * 3 for _ in range(4)]

    def quantize():
        m = copy.deepcopy(model)
        tail = []
        m.tail.register_forward_hook(lambda *a: tail.append(1))
        m, summary = quantize_model(m, W4A4_REPQ, data)
        assert sum(r['mode'] == 'scale+shift'
                   for r in summary.transforms) == 2
        return m, len(tail)

    cut, cut_tail = quantize()
    monkeypatch.setattr(RepQReparam, 'first_pass_needs', lambda self: None)
    whole, whole_tail = quantize()
    # discover + trace + first pass + second pass
    assert whole_tail == 2 + 2 * len(data)
    assert cut_tail == 2 + 1 + len(data)
    a, b = cut.state_dict(), whole.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with torch.no_grad():
        assert torch.equal(cut(data[0]), whole(data[0]))
