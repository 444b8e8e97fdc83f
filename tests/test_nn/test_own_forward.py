"""Conv / Linear subclasses with their own forward (TF "same" padding,
``super().forward``, ...): quantized through their call of the parent's
functional op with their own weight; those computing something else stay FP
with the reason."""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmptq.apis import quantize_model
from mmptq.core.restore import quant_meta, restore_quantized
from mmptq.nn import QuantConv2d, QuantOwnForwardMixin
from mmptq.nn.modules import QuantWeightMixin


def same_pads(x, weight, stride):
    """TF "same" padding, as mmcv's Conv2dAdaptivePadding computes it."""
    (h, w), (kh, kw) = x.shape[-2:], weight.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kh - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kw - w, 0)
    return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]


class SamePadConv(nn.Conv2d):
    """Pads in its forward, then F.conv2d with its own weight."""

    def forward(self, x):
        x = F.pad(x, same_pads(x, self.weight, self.stride[0]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


class SuperForwardConv(nn.Conv2d):
    """Reflect-pads, then the parent's forward (``super()``)."""

    def forward(self, x):
        return super().forward(F.pad(x, [1, 1, 1, 1], mode='reflect'))


class ScaledLinear(nn.Linear):
    """F.linear with its own weight (keyword arguments), then a scale."""

    def forward(self, x):
        return 2.0 * F.linear(input=x, weight=self.weight, bias=self.bias)


class StandardizedConv(nn.Conv2d):
    """Weight standardization (mmcv's ConvWS2d): another weight."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (
            w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class NoConv(nn.Conv2d):
    """Computes no convolution at all."""

    def forward(self, x):
        return x * self.weight.mean()


class TwiceConv(nn.Conv2d):
    """Calls F.conv2d twice with its own weight."""

    def forward(self, x):
        return self._conv_forward(self._conv_forward(x, self.weight, None),
                                  self.weight, self.bias)


def own_model():
    torch.manual_seed(0)
    return nn.Sequential(
        SamePadConv(3, 8, 3, stride=2), nn.ReLU(),
        SuperForwardConv(8, 8, 3, groups=8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.Flatten(1), ScaledLinear(8 * 16, 10)).eval()


def other_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), StandardizedConv(4, 4, 3, padding=1),
        NoConv(4, 4, 1), TwiceConv(4, 4, 1), nn.Conv2d(4, 4, 1)).eval()


def data(n=3, shape=(2, 3, 8, 8)):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


@pytest.fixture(scope='module')
def quantized():
    fp = own_model()
    model, summary = quantize_model(copy.deepcopy(fp), dict(w_bits=4,
                                                            a_bits=4), data())
    return fp, model, summary


def test_own_forward_ops_are_quantized(quantized):
    fp, model, summary = quantized
    rows = {r['name']: r for r in summary}
    assert [rows[n]['status'] for n in ('0', '2', '4', '6')] == \
        ['quantized'] * 4
    assert [rows[n].get('own_forward', False) for n in ('0', '2', '4', '6')] \
        == [True, True, False, True]
    assert summary.own_forward_counts() == {'quantized': 3}
    assert summary.counts() == {'conv2d': {'quantized': 3},
                                'linear': {'quantized': 1}}
    # the module keeps its class (its forward) and is a quantized op
    for i, cls in ((0, SamePadConv), (2, SuperForwardConv),
                   (6, ScaledLinear)):
        assert isinstance(model[i], cls)
        assert isinstance(model[i], QuantOwnForwardMixin)
    assert type(model[4]) is QuantConv2d
    assert 'own forward' in str(summary).lower()
    # same Parameters, same state-dict names (plus the quantizers)
    assert model[0].weight is fp[0].weight or torch.equal(
        model[0].weight, fp[0].weight)
    assert set(fp.state_dict()) <= set(model.state_dict())
    # the FP module itself is untouched
    assert not hasattr(fp[0], 'weight_quantizer')


def test_same_padding_conv_equals_closed_form(quantized):
    _, model, _ = quantized
    q = model[0]
    x = data(1, (2, 3, 9, 7))[0]  # odd sizes: asymmetric "same" padding
    with torch.no_grad():
        out = q(x)
        xp = F.pad(x, same_pads(x, q.weight, 2))
        expected = F.conv2d(q.input_quantizer(xp),
                            q.weight_quantizer(q.weight), q.bias, 2)
        fp = F.conv2d(xp, q.weight, q.bias, 2)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, fp, atol=1e-3)  # it is quantized


def test_super_forward_and_keyword_linear_equal_closed_form(quantized):
    _, model, _ = quantized
    conv, lin = model[2], model[6]
    x = data(1, (2, 8, 4, 4))[0]
    y = data(1, (2, 8 * 16))[0]
    with torch.no_grad():
        xp = F.pad(x, [1, 1, 1, 1], mode='reflect')
        expected = F.conv2d(conv.input_quantizer(xp),
                            conv.weight_quantizer(conv.weight), conv.bias,
                            groups=8)
        assert torch.equal(conv(x), expected)
        expected = 2.0 * F.linear(lin.input_quantizer(y),
                                  lin.weight_quantizer(lin.weight), lin.bias)
        assert torch.equal(lin(y), expected)
        assert not torch.allclose(
            lin(y), 2.0 * F.linear(y, lin.weight, lin.bias), atol=1e-3)


def test_ops_computing_something_else_stay_fp():
    fp = other_model()
    model, summary = quantize_model(copy.deepcopy(fp), dict(), data(2, (
        2, 3, 6, 6)))
    rows = {r['name']: r for r in summary}
    assert [rows[n]['status'] for n in '01234'] == \
        ['quantized', 'fp', 'fp', 'fp', 'quantized']
    assert rows['1']['reason'] == (
        'StandardizedConv overrides the forward of Conv2d: its forward does '
        'not end in F.conv2d with its own weight (it calls F.conv2d with '
        'another weight)')
    assert rows['2']['reason'].endswith(
        'does not end in F.conv2d with its own weight (no such call in the '
        'discovery forward)')
    assert rows['3']['reason'].endswith(
        'its forward calls F.conv2d with its own weight 2 times')
    assert summary.own_forward_counts() == {'fp': 3}
    for i, cls in ((1, StandardizedConv), (2, NoConv), (3, TwiceConv)):
        assert type(model[i]) is cls
    x = data(1, (2, 3, 6, 6))[0]
    with torch.no_grad():  # the FP ops compute what they did
        assert torch.equal(model[1](fp[0](x)), fp[1](fp[0](x)))


def test_checkpoint_round_trip_is_bit_identical(quantized):
    _, model, summary = quantized
    meta = quant_meta(summary)
    assert meta['calls']['0'][0]['weight'] == 'own'
    assert '4' not in meta['calls']  # plain ops record nothing
    fresh = own_model()
    restored = restore_quantized(fresh, meta)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert [type(m) for m in fresh] == [type(m) for m in model]
    assert [r['status'] for r in restored] == [r['status'] for r in summary]
    x = data(1)[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_deepcopy_and_pickle(quantized):
    _, model, _ = quantized
    x = data(1)[0]
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(copy.deepcopy(model)(x), ref)
        assert torch.equal(loaded(x), ref)
    assert type(loaded[0]) is type(model[0])


def test_forward_calling_twice_at_run_time_raises(quantized):
    _, model, _ = quantized
    q = copy.deepcopy(model[0])

    def twice(self, x):
        y = F.conv2d(x, self.weight, None, 1, 1)
        return F.conv2d(y[:, :3], self.weight, None, 1, 1)

    q.float_class = type('Twice', (SamePadConv, ), {'forward': twice})
    with pytest.raises(RuntimeError, match='more than once'):
        q(data(1)[0])


def test_plain_models_record_nothing_new():
    """Plain classes and mmcv's wrappers: wrapped as before, no record."""
    from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), MMCVConv2d(4, 4, 1),
                          nn.Flatten(1), nn.Linear(4 * 36, 2)).eval()
    _, summary = quantize_model(model, dict(), data(1))
    assert summary.calls == {}
    assert summary.own_forward_counts() == {}
    assert all(isinstance(m, QuantWeightMixin) and
               not isinstance(m, QuantOwnForwardMixin)
               for m in (model[0], model[1], model[3]))
