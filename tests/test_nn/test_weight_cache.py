"""The quantized weight kept for evaluation (``QuantWeightMixin.quant_weight``):
reused while nothing it depends on changed, recomputed after every change
that can move it, never kept under autograd, calibration or a trace."""
import copy

import pytest
import torch
from torch import nn

from mmptq.nn import QuantLinear, forget_quantized_weights
from mmptq.quantizers import AdaRoundQuantizer, UniformQuantizer


class CountingQuantizer(UniformQuantizer):
    """A 4-bit per-channel weight quantizer that counts its forwards (in a
    list: a plain int attribute is part of the kept weight's key)."""

    def __init__(self) -> None:
        super().__init__(bits=4, granularity='channel')
        self.log = []

    @property
    def calls(self) -> int:
        return len(self.log)

    def forward(self, x):
        self.log.append(1)
        return super().forward(x)


def frozen_linear(seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    layer = QuantLinear.from_float(nn.Linear(16, 8))
    layer.attach(CountingQuantizer(), None)
    layer.calibrate_weight()
    layer.weight_quantizer.freeze()
    layer.weight_quantizer.log.clear()
    return layer


def reference(layer: QuantLinear) -> torch.Tensor:
    """Q_w(W) computed anew by the quantizer's class (no cache)."""
    return UniformQuantizer.forward(layer.weight_quantizer, layer.weight)


def test_evaluation_quantizes_a_frozen_weight_once():
    layer = frozen_linear()
    x = torch.randn(3, 16)
    with torch.no_grad():
        outs = [layer(x) for _ in range(4)]
    assert layer.weight_quantizer.calls == 1
    expected = torch.nn.functional.linear(x, reference(layer), layer.bias)
    for out in outs:
        assert torch.equal(out, expected)


@pytest.mark.parametrize('change', [
    'weight_in_place', 'weight_data_replaced', 'load_state_dict',
    'new_qparams', 'scale_in_place', 'bits', 'quantizer_replaced',
    'forward_patched'
])
def test_every_change_recomputes(change):
    layer = frozen_linear()
    with torch.no_grad():
        before = layer.quant_weight()
        q = layer.weight_quantizer
        if change == 'weight_in_place':
            layer.weight.mul_(3)
        elif change == 'weight_data_replaced':  # not version counted
            layer.weight.data = layer.weight.data * 3
        elif change == 'load_state_dict':
            other = frozen_linear(seed=1)
            layer.load_state_dict(other.state_dict())
        elif change == 'new_qparams':
            q.set_qparams(q.scale * 2, q.zero_point)
        elif change == 'scale_in_place':
            q.scale.mul_(2)
        elif change == 'bits':
            q.bits, q.quant_min, q.quant_max = 2, 0, 3
        elif change == 'quantizer_replaced':
            layer.weight_quantizer = copy.deepcopy(q)
            layer.weight_quantizer.scale.mul_(2)
        elif change == 'forward_patched':  # as the ONNX export does
            q.forward = lambda x, q=q: 2 * UniformQuantizer.forward(q, x)
        after = layer.quant_weight()
    expected = layer.weight_quantizer(layer.weight)
    assert not torch.equal(after, before)
    assert torch.equal(after, expected)


def test_adaround_hardening_recomputes():
    """AdaRound's ``soft`` flag is a plain attribute: flipping it moves
    the weight without any tensor changing."""
    layer = frozen_linear()
    ada = AdaRoundQuantizer.from_uniform(layer.weight_quantizer, layer.weight)
    with torch.no_grad():
        ada.alpha.add_(torch.randn_like(ada.alpha))
    layer.weight_quantizer = ada
    with torch.no_grad():
        soft = layer.quant_weight()
        ada.soft = False
        hard = layer.quant_weight()
    assert not torch.equal(soft, hard)
    assert torch.equal(hard, ada(layer.weight))


def test_not_kept_under_autograd_calibration_or_trace():
    layer = frozen_linear()
    x = torch.randn(2, 16)
    layer(x)  # grad enabled
    assert '_weight_cache' not in vars(layer)
    assert layer.weight_quantizer.calls == 1
    with torch.no_grad():
        layer(x)
    assert '_weight_cache' in vars(layer)
    with torch.no_grad():  # as the ONNX export traces
        traced = torch.jit.trace(layer, x, check_trace=False)
    assert '_weight_cache' not in vars(layer)
    # a trace records the quantizer's ops, not the kept tensor as a constant
    assert 'round' in str(traced.inlined_graph)


def test_observing_quantizer_is_fed_every_call():
    layer = QuantLinear.from_float(nn.Linear(16, 8))
    q = UniformQuantizer(bits=4, granularity='channel')
    layer.attach(q, None)
    q.observing = True
    with torch.no_grad():
        layer(torch.randn(2, 16))
        layer(torch.randn(2, 16))
    assert int(q.observer.num_batches) == 2


def test_forget_quantized_weights_after_an_unversioned_edit():
    """An in-place edit through ``.data`` bypasses version counting: the
    kept weight is stale until ``forget_quantized_weights``."""
    layer = frozen_linear()
    model = nn.Sequential(layer)
    with torch.no_grad():
        layer.quant_weight()
        layer.weight.data.mul_(3)
        stale = layer.quant_weight()
        forget_quantized_weights(model)
        fresh = layer.quant_weight()
    assert torch.equal(fresh, reference(layer))
    assert not torch.equal(stale, fresh)
