"""APHQ-ViT: the average perturbation Hessian against its closed form, the
weighted loss, and a run on the toy ViT."""
import pytest
import torch
from torch import nn

import mmptq  # noqa: F401
from mmptq.reconstruction import APHQReconstruction
from mmptq.reconstruction.aphq import (aph_loss, average_hessian,
                                       perturbed_grads, task_forward)
from mmptq.reconstruction.fit import rec_loss
from helpers import quantized_vit


def toy(out_dim=3):
    torch.manual_seed(0)
    unit = nn.Linear(4, 4).double()
    rest = nn.Linear(4, out_dim, bias=False).double()
    return nn.Sequential(unit, rest), unit, rest.weight.detach()


def test_aph_of_a_quadratic_task_loss_is_its_closed_form():
    """Rest of the network linear, z = A·o, and tokens (3-D output): L is
    ½ mean (A(o − o_FP))², whose Hessian in o is AᵀA / M (M the number of
    elements of z). The ±δ·1 finite difference is exact for a quadratic:
    every token row gets AᵀA·1 / M; the average over samples and the
    normalisation to mean 1 give |AᵀA·1| / mean |AᵀA·1|."""
    model, unit, a = toy()
    batches = [torch.randn(2, 5, 4, dtype=torch.float64) for _ in range(3)]
    refs = [model(b).detach() for b in batches]
    per_call = perturbed_grads(model, unit, batches, 1, refs, 1e-3, 1.0)
    assert len(per_call) == 3 and all(len(c) == 1 for c in per_call)
    m = 2 * 5 * 3
    expected = (a.T @ a @ torch.ones(4, dtype=torch.float64)) / m
    for (h, ) in per_call:
        assert h.shape == (2, 5, 4)
        torch.testing.assert_close(h, expected.expand(2, 5, 4), rtol=1e-6,
                                   atol=1e-12)
    (w, ), = average_hessian(per_call[:1])
    torch.testing.assert_close(
        w, (expected.abs() / expected.abs().mean()).expand(2, 5, 4))


def test_aph_of_the_classifier_kl_is_its_closed_form():
    """(N, C) logits: L = KL(softmax(z_FP/T) ‖ softmax(z/T)) (batch mean);
    at o_FP its Hessian in o is Aᵀ(diag(p) − ppᵀ)A / (T² N) per image, and
    the finite difference gives that times 1 up to O(δ²)."""
    model, unit, a = toy()
    x = torch.randn(2, 4, dtype=torch.float64)
    ref = model(x).detach()
    t = 2.0
    (h, ), = perturbed_grads(model, unit, [x], 1, [ref], 1e-4, t)
    for n in range(2):
        p = torch.softmax(ref[n] / t, 0)
        hess = a.T @ (torch.diag(p) - torch.outer(p, p)) @ a / (t * t * 2)
        torch.testing.assert_close(h[n], hess @ torch.ones(4).double(),
                                   rtol=1e-5, atol=1e-12)


def test_average_over_samples_by_shape():
    """Calls with the same trailing shape share one mean over all their
    rows; another shape keeps its own; the result has mean 1."""
    a = torch.tensor([[1., -2.], [3., 4.]])
    b = torch.tensor([[5., 6.]])
    c = torch.tensor([[7., 8., 9.]])
    out = average_hessian([[a], [b], [c]])
    mean_ab = torch.tensor([3., 4.])  # (1 + 3 + 5) / 3, (2 + 4 + 6) / 3
    total = (mean_ab.sum() * 3 + c.sum()) / 9
    torch.testing.assert_close(out[0][0], mean_ab.expand(2, 2) / total)
    torch.testing.assert_close(out[1][0], mean_ab.expand(1, 2) / total)
    torch.testing.assert_close(out[2][0], c / total)
    # a second output the loss ignores: weight 1
    zero = average_hessian([[a, torch.zeros(2, 3)]])
    torch.testing.assert_close(zero[0][1], torch.ones(2, 3))


def test_aph_loss_weights_the_error():
    out, target = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(aph_loss(out, target, None),
                               rec_loss(out, target))
    w = torch.rand(3, 4, 5)
    torch.testing.assert_close(
        aph_loss((out, ), (target, ), [w]),
        (w * (out - target)**2).sum(1).mean())


def test_aphq_runs_on_the_toy_vit(tmp_path, monkeypatch):
    """Every unit of the toy ViT is fitted with APH weights (positive,
    mean 1) and the run ends with no unit worse than calibrated."""
    from mmptq.reconstruction import aphq
    seen = []

    def spy(out, target, weights):
        seen.append(weights)
        return aph_loss(out, target, weights)

    monkeypatch.setattr(aphq, 'aph_loss', spy)
    _, _, summary, data = quantized_vit(dict(
        type='APHQReconstruction', iters=20, batch_size=8, resume=False,
        work_dir=str(tmp_path)))
    rows = summary.reconstruction
    assert rows and len(seen) == 20 * len(rows)
    assert all(w is not None and all((t > 0).all() for t in w)
               for w in seen)
    for r in rows:
        assert r['kept'] == (r['held_after'] <= r['held_before']), r


def test_task_forward_of_a_plain_module():
    model, _, _ = toy()
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(task_forward(model, x), model(x))


@pytest.mark.parametrize('kwargs,match', [
    (dict(perturb=0.0), 'perturb'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(pertub=1e-3), "unknown key 'pertub'"),
])
def test_bad_aphq_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        APHQReconstruction(**kwargs)


def test_aph_when_the_next_op_is_in_place():
    """The perturbed output feeds an in-place ReLU (mmdet's RoI heads): the
    estimate is the one of the out-of-place network."""
    torch.manual_seed(0)
    unit = nn.Linear(4, 4).double()
    model = nn.Sequential(unit, nn.ReLU(inplace=True), nn.Linear(4, 3).double())
    ref_model = nn.Sequential(unit, nn.ReLU(), model[2])
    x = [torch.randn(2, 5, 4, dtype=torch.float64)]
    refs = [model(x[0]).detach()]
    got = perturbed_grads(model, unit, x, 1, refs, 1e-3, 1.0)
    want = perturbed_grads(ref_model, unit, x, 1, refs, 1e-3, 1.0)
    torch.testing.assert_close(got[0][0], want[0][0])
