"""Ops that run several times per forward (a head shared by the FPN
levels) get one input quantizer per call."""
import torch
from torch import nn

from mmptq.apis import quantize_model
from mmptq.core.restore import quant_meta, restore_quantized
from mmptq.quantizers import PerCallQuantizer

MINMAX = dict(type='UniformQuantizer',
              observer=dict(type='MinMaxObserver'))


class SharedHead(nn.Module):
    """One Linear applied to three 'levels' of very different scales."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scales = (100.0, 1.0, 0.01)

    def forward(self, x):
        return torch.stack([self.fc(x * s) for s in self.scales])


def test_one_quantizer_per_call():
    torch.manual_seed(0)
    model = SharedHead().eval()
    data = [torch.randn(8, 4) for _ in range(2)]
    _, summary = quantize_model(model, dict(act=MINMAX, weight=dict(
        observer=dict(type='MinMaxObserver'))), data)
    assert summary.call_counts == {'fc': 3}
    q = model.fc.input_quantizer
    assert isinstance(q, PerCallQuantizer) and len(q.slots) == 3
    assert [s.name for s in q.slots] == ['fc.input@0', 'fc.input@1',
                                         'fc.input@2']
    for slot, s in zip(q.slots, model.scales):
        seen = torch.cat(data) * s
        lo, hi = seen.min().clamp(max=0), seen.max().clamp(min=0)
        torch.testing.assert_close(slot.scale, ((hi - lo) / 255).reshape(1))
    # each call's input is quantized with its own step: the smallest level
    # keeps its resolution (a shared range would round it to ~0)
    x = data[0]
    with torch.no_grad():
        out = model(x)
        again = model(x)  # the counter restarts at every forward
    assert torch.equal(out, again)
    fp = torch.stack([nn.functional.linear(x * s, model.fc.weight,
                                           model.fc.bias)
                      for s in model.scales])
    rel = (out[2] - fp[2]).norm() / fp[2].norm()
    assert rel < 0.05, rel


def test_per_call_checkpoint_round_trip():
    torch.manual_seed(0)
    model = SharedHead().eval()
    fresh = SharedHead().eval()
    fresh.load_state_dict(model.state_dict())
    data = [torch.randn(8, 4)]
    _, summary = quantize_model(model, dict(w_bits=6, a_bits=6), data)
    restore_quantized(fresh, quant_meta(summary))
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), model(data[0]))
