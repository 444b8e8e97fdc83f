"""Hutchinson Hessian-trace estimate and HAWQ-V2's weight sensitivity
(mmptq.core.sensitivity.hutchinson_traces / hessian_sensitivity) against
the closed form of quadratic losses."""
import math

import torch
from torch import nn

from mmptq.core import quant_ops, quantize_model, run_batch
from mmptq.core.sensitivity import hessian_sensitivity, hutchinson_traces


def quadratic(a: torch.Tensor):
    """L(w) = ½ wᵀ A w, Hessian A (symmetric)."""

    def loss(batch):
        w = batch  # the parameter, passed as the batch
        return 0.5 * w @ a @ w

    return loss


def test_diagonal_hessian_is_exact():
    """Rademacher v: vᵀDv = Σ D_ii v_i² = Tr(D) for every draw, so the
    estimate of a diagonal Hessian is exact with zero spread."""
    d = torch.tensor([3.0, -1.0, 0.5, 7.0, 2.0], dtype=torch.float64)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    traces, errors = hutchinson_traces([w], [w], quadratic(torch.diag(d)),
                                       num_samples=3)
    assert math.isclose(traces[0], float(d.sum()), rel_tol=1e-12)
    assert errors[0] < 1e-12


def test_dense_hessian_within_the_monte_carlo_bound():
    """A dense A: vᵀAv has mean Tr(A) and variance 2 Σ_{j≠k} A_jk²; the
    mean of m draws lies within 4 standard deviations sqrt(2 Σ_{j≠k}
    A_jk² / m) (Chebyshev: probability ≥ 1 − 1/16 for any seed; the seed
    is fixed)."""
    g = torch.Generator().manual_seed(0)
    b = torch.randn(20, 20, generator=g, dtype=torch.float64)
    a = b @ b.T / 20 + torch.eye(20, dtype=torch.float64)
    w = torch.randn(20, dtype=torch.float64, generator=g,
                    requires_grad=True)
    m = 200
    traces, errors = hutchinson_traces([w], [w], quadratic(a), m)
    off = a - torch.diag(torch.diag(a))
    sigma = math.sqrt(2 * float(off.pow(2).sum()) / m)
    assert abs(traces[0] - float(a.trace())) < 4 * sigma
    # the reported standard error estimates the same sigma
    assert 0.5 * sigma < errors[0] < 2 * sigma
    # and the estimate is not the diagonal case's exact value by accident
    assert traces[0] != float(a.trace())


def test_blocks_of_two_tensors():
    """L = ½ [u; w]ᵀ A [u; w]: the trace of each tensor's diagonal block,
    the cross block averaging out (exact here: diagonal blocks, zero-mean
    cross terms only through v_u v_w, which a block-diagonal A lacks)."""
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0],
                                dtype=torch.float64))
    u = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def loss(_):
        x = torch.cat([u, w])
        return 0.5 * x @ a @ x

    traces, _ = hutchinson_traces([u, w], [None], loss, num_samples=2)
    assert traces == [6.0, 30.0]


class Regression(nn.Module):
    """y = fc2(fc1(x)) (linear): with an MSE loss the Hessian of fc2's
    weight is block diagonal with blocks (2/N)·Σ h hᵀ per output row,
    h = fc1(x); its trace 2·out·mean_n ‖h_n‖²."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x))


def test_hawq_v2_omega_of_a_layer():
    """Ω = Tr(H)/n · ‖Q(W) − W‖² (HAWQ-V2 Eq. 2.11) for fc2 of a linear
    regression, whose Hessian is known in closed form; the weight
    quantizers are left as they were."""
    model = Regression().eval()
    g = torch.Generator().manual_seed(2)
    data = [torch.randn(16, 6, generator=g) for _ in range(2)]
    target = torch.randn(16, 3, generator=g)
    model, summary = quantize_model(model, dict(w_bits=4, a_bits=4), data)
    run = run_batch(model)
    ops = quant_ops(model, summary, lambda: run(data[0]))

    def loss(x):
        return (model(x) - target).pow(2).mean() * 3  # Σ over outputs

    got = hessian_sensitivity(ops, data, loss, num_samples=4)
    assert set(got) == {'fc1:weight', 'fc2:weight'}
    fc2 = got['fc2:weight']
    # H of Σ_o mean_n (y_no − t)² in W2: per row 2·mean_n h hᵀ, diagonal
    # entries 2·mean_n h_j²; trace = 3 · 2 · mean_n ‖h_n‖², where h is
    # fc1's FP output (the quantizers are off while the trace is taken)
    with torch.no_grad():
        hs = [nn.functional.linear(x, model.fc1.weight, model.fc1.bias)
              for x in data]
    want = sum(3 * 2 * h.pow(2).sum(1).mean() for h in hs) / len(hs)
    # W2's Hessian is block diagonal over the output rows with identical
    # blocks, not diagonal: the estimate carries Monte-Carlo error; its
    # own standard error bounds it
    assert abs(fc2['trace'] - float(want)) < 4 * fc2['trace_err'] + 1e-9
    w = model.fc2.weight
    with torch.no_grad():
        q = model.fc2.weight_quantizer(w)
    err = float((q - w.detach()).pow(2).sum())
    assert err > 0
    assert math.isclose(fc2['quant_err'], err, rel_tol=1e-6)
    assert math.isclose(fc2['hessian'], fc2['trace'] / w.numel() * err,
                        rel_tol=1e-9)
    # flags and requires_grad restored
    assert all(q.enabled for op in ops for q in op.quantizers)
    assert w.requires_grad
