"""Per-op sensitivity (mmptq.core.sensitivity): ops in forward order with
their MACs, one op switched on alone, the fragile op ranked first."""
import math

import torch
from torch import nn

from mmptq.apis.analyze import sqnr_db
from mmptq.core import (only, op_sensitivity, quant_ops, quantize_model,
                        run_batch)
from toy_models import TinyViT


class FragileMLP(nn.Module):
    """fc1 → fc2 → fc3 → fc4; ``fragile``: channel 3 of fc2's output is
    ×50 and fc3's weight column 3 is /50 (the same FP function), so fc3's
    per-tensor input quantizer spends its range on one outlier channel."""

    def __init__(self, fragile: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 32)
        self.fc3, self.fc4 = nn.Linear(32, 32), nn.Linear(32, 8)
        if fragile:
            with torch.no_grad():
                self.fc2.weight[3] *= 50
                self.fc2.bias[3] *= 50
                self.fc3.weight[:, 3] /= 50

    def forward(self, x):
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.fc4(torch.relu(self.fc3(x)))


def batches(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 16, generator=g) for _ in range(n)]


def no_loss(model):
    """Runs a batch, returns no loss (SQNR only)."""

    def forward(batch):
        model(batch)

    return forward


def quantized(model, bits=4):
    data = batches()
    model, summary = quantize_model(
        model.eval(), dict(w_bits=bits, a_bits=bits,
                           calib=dict(mode='parallel')), data)
    return model, summary, data


def test_fragile_op_ranks_first():
    model, summary, data = quantized(FragileMLP())
    run = run_batch(model)
    ops = quant_ops(model, summary, lambda: run(data[0]))
    rows = op_sensitivity(ops, data[:2], no_loss(model), [model], sqnr_db)
    worst = min(rows, key=lambda r: r['sqnr'])
    assert worst['key'] == 'fc3:act'
    # one noise ratio per output tensor per batch; noise is their mean
    assert len(worst['noises']) == 2
    assert math.isclose(worst['noise'], sum(worst['noises']) / 2)
    assert worst['loss_increase'] is None  # no loss given
    # without the outlier the same op is harmless
    model, summary, data = quantized(FragileMLP(fragile=False))
    run = run_batch(model)
    ops = quant_ops(model, summary, lambda: run(data[0]))
    rows = {r['key']: r for r in op_sensitivity(
        ops, data[:2], no_loss(model), [model], sqnr_db)}
    assert rows['fc3:act']['sqnr'] > worst['sqnr'] + 10


def test_one_op_alone_is_that_op_quantized():
    """The model with only fc3's input quantizer on gives the output of
    the FP model with fc3's input fake-quantized by that quantizer."""
    model, summary, data = quantized(FragileMLP())
    run = run_batch(model)
    ops = {op.key: op for op in quant_ops(model, summary,
                                          lambda: run(data[0]))}
    x = data[0]
    with only(ops.values(), [ops['fc3:act']]), torch.no_grad():
        got = model(x)
        h = torch.relu(model.fc2(torch.relu(model.fc1(x))))
        h = model.fc3.input_quantizer.quantize_with(
            h, model.fc3.input_quantizer.scale,
            model.fc3.input_quantizer.zero_point)
        ref = nn.functional.linear(torch.relu(
            nn.functional.linear(h, model.fc3.weight, model.fc3.bias)),
            model.fc4.weight, model.fc4.bias)
    assert torch.allclose(got, ref, atol=1e-6)
    # flags restored: every quantizer on again
    assert all(q.enabled for op in ops.values() for q in op.quantizers)
    # a loss increase is the mean over the batches of loss(op) − loss(FP)
    rows = {r['key']: r for r in op_sensitivity(
        list(ops.values()), data[:2], lambda b: model(b).pow(2).mean(),
        [model], sqnr_db)}

    def mean_loss():
        return sum(float(model(b).pow(2).mean()) for b in data[:2]) / 2

    with only(ops.values(), []), torch.no_grad():
        fp = mean_loss()
    with only(ops.values(), [ops['fc3:act']]), torch.no_grad():
        alone = mean_loss()
    assert alone != fp
    assert math.isclose(rows['fc3:act']['loss_increase'], alone - fp,
                        rel_tol=1e-5)


def test_ops_in_forward_order_with_macs():
    torch.manual_seed(0)
    model = TinyViT().eval()
    data = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    model, summary = quantize_model(model, dict(w_bits=4, a_bits=4), data)
    run = run_batch(model)
    ops = quant_ops(model, summary, lambda: run(data[0]))
    keys = [op.key for op in ops]
    assert keys[:3] == ['patch_embed:weight', 'patch_embed:act',
                        'blocks.0.attn.qkv:weight']
    assert keys[-1] == 'head:act'
    by_key = {op.key: op for op in ops}
    # conv 3→32, k=4, stride 4 on 32x32: 2·32·8·8 outputs x 3·4·4 MACs
    assert by_key['patch_embed:weight'].macs == 2 * 32 * 64 * 48
    assert by_key['patch_embed:weight'].params == 32 * 48
    assert by_key['patch_embed:act'].params == 0
    # q·kᵀ of 4 heads, 64 tokens, head dim 8: 2·4·64·64·8 MACs
    qk = by_key['blocks.0.attn.qk0:act']
    assert (qk.layer_kind, qk.unit) == ('qk', 'blocks.0.attn')
    assert qk.macs == 2 * 4 * 64 * 64 * 8
    assert by_key['blocks.0.attn.softmax1:act'].macs == 0
    sdpa = by_key['blocks.1.attn.sdpa0:act']  # q·kᵀ and attn·v
    assert sdpa.macs == 2 * qk.macs
    assert len(sdpa.quantizers) == 4  # q, k, softmax, v
