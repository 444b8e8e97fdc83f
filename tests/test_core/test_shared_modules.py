"""A module held by several parents (RTMDet's head shares its convs across
pyramid levels: ``cls_convs[n][i].conv = cls_convs[0][i].conv``) is one
op: it is wrapped once, every parent holds the wrapper, and its input
quantizer has one slot per call."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from mmptq.apis import quantize_model
from mmptq.core.restore import quant_meta, restore_quantized
from mmptq.nn.modules import QuantConv2d


class SharedConvHead(nn.Module):
    """A stem, then one conv shared by three levels (each level sees the
    stem's output pooled 1x, 2x, 4x)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        shared = nn.Conv2d(4, 4, 3, padding=1)
        self.levels = nn.ModuleList(
            nn.Sequential(shared, nn.ReLU()) for _ in range(3))

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([lvl(F.avg_pool2d(x, 2**i)).flatten(1)
                          for i, lvl in enumerate(self.levels)], 1)


def test_a_shared_conv_is_quantized_under_every_parent():
    torch.manual_seed(0)
    model = SharedConvHead().eval()
    data = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    fp = copy.deepcopy(model)
    q, summary = quantize_model(model, 'w8a8', data)
    conv = q.levels[0][0]
    assert isinstance(conv, QuantConv2d)
    assert all(lvl[0] is conv for lvl in q.levels)
    assert summary.fp_rows() == []  # every per-call slot saw data
    assert summary.counts() == {'conv2d': {'quantized': 2}}
    assert summary.call_counts == {'levels.0.0': 3}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out, ref = q(x), fp(x)
        # each level's slice is the quantized conv's: turning the shared
        # conv's quantizers off changes all three slices
        for quantizer in (conv.weight_quantizer, conv.input_quantizer):
            quantizer.enabled = False
        unquantized_conv = q(x)
    n = ref.shape[1] // 21  # slices of 16 : 4 : 1 spatial sizes
    for lo, hi in ((0, 16 * n), (16 * n, 20 * n), (20 * n, 21 * n)):
        assert not torch.equal(out[:, lo:hi], unquantized_conv[:, lo:hi])
    # and the quantized checkpoint restores into a fresh model
    fresh = SharedConvHead().eval()
    restore_quantized(fresh, quant_meta(summary))
    assert all(lvl[0] is fresh.levels[0][0] for lvl in fresh.levels)
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), out)
