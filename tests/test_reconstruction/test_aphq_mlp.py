"""APHQ-ViT's MLP Reconstruction (APHQMLPReconstruction): GELU -> ReLU only
in the selected MLPs, the fitted ReLU MLP closer to the GELU MLP than the
bare swap on samples the fit never saw, off unless a preset names it."""
import copy

import torch
from torch import nn

import mmptq  # noqa: F401
from mmptq.apis import load_quant_cfg, resolve_quant_cfg
from mmptq.core.quantize import quantize_model
from mmptq.reconstruction import APHQMLPReconstruction
from mmptq.reconstruction.aphq_mlp import find_mlps, positive_percentile
from mmptq.transforms import TransformContext


class Block(nn.Module):

    def __init__(self, dim=8, hidden=32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x):
        return x + self.mlp(x)


class Toy(nn.Module):
    """Two blocks whose MLPs are named ``blocks.N.mlp``, one GELU MLP that
    is not (``other``), a classifier head on the mean token."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(Block(), Block())
        self.other = nn.Sequential(nn.Linear(8, 16), nn.GELU(),
                                   nn.Linear(16, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.other(self.blocks(x)).mean(1))


def batches(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 6, 8, generator=gen) for _ in range(n)]


def run(model, **kwargs):
    data = batches(4, seed=1)
    t = APHQMLPReconstruction(mlps=r'blocks\.\d+\.mlp', **kwargs)
    t.before_wrap(model, TransformContext(run_batch=lambda: None,
                                          recalibrate=None, batches=data))
    return t


def mlp_error(mlp, ref, xs):
    with torch.no_grad():
        return sum(float((mlp(x) - ref(x)).pow(2).mean()) for x in xs)


def test_swap_only_in_the_named_mlps():
    model = Toy()
    assert find_mlps(model, r'blocks\.\d+\.mlp') == [('blocks.0.mlp', '1'),
                                                      ('blocks.1.mlp', '1')]
    t = run(model, iters=2)
    for block in model.blocks:
        assert isinstance(block.mlp[1], nn.ReLU)
    assert isinstance(model.other[1], nn.GELU)  # not selected: unchanged
    assert [r['target'] for r in t.rows] == ['blocks.0.mlp', 'blocks.1.mlp']
    assert [r['consumers'] for r in t.rows] == [['blocks.0.mlp.1'],
                                                ['blocks.1.mlp.1']]


def test_fitted_relu_mlp_beats_the_bare_swap_on_unseen_samples():
    """Against the GELU MLP on fresh inputs (not calibration samples): the
    fitted ReLU MLP's error is strictly below the swap with the original
    weights. lr 1e-2 for 100 steps instead of the reference's 4e-5 for
    20,000 (a short fit needs a larger step); the claim is the direction."""
    model = Toy()
    gelu = [copy.deepcopy(b.mlp) for b in model.blocks]
    swapped = [copy.deepcopy(m) for m in gelu]
    for m in swapped:
        m[1] = nn.ReLU()
    t = run(model, iters=100, lr=1e-2)
    fresh = batches(3, seed=7)
    for i, block in enumerate(model.blocks):
        # the input distribution of block i in the original model
        with torch.no_grad():
            xs = fresh if i == 0 else [Toy().blocks[0](x) for x in fresh]
        fitted = mlp_error(block.mlp, gelu[i], xs)
        bare = mlp_error(swapped[i], gelu[i], xs)
        assert fitted < bare, (i, fitted, bare)
        row = t.rows[i]
        assert row['mode'] == 'fitted'
        assert row['error_fit'] < row['error_swap']
        assert row['held_out_calls'] == 1  # 25 % of 4 batches


def test_a_fit_that_made_it_worse_keeps_the_swapped_weights():
    """lr 1e3 makes Adam's first steps throw the weights far off: the
    held-out error rises, the copy keeps the original weights."""
    model = Toy()
    before = copy.deepcopy(model.blocks[0].mlp.state_dict())
    t = run(model, iters=3, lr=1e3, hessian=False)
    assert t.rows[0]['mode'] == 'swapped'
    assert t.rows[0]['error_fit'] >= t.rows[0]['error_swap']
    for k, v in model.blocks[0].mlp.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert isinstance(model.blocks[0].mlp[1], nn.ReLU)


def test_positive_percentile_rank():
    """The reference's rank ⌈n·pct⌉ among the positive values only."""
    values = [torch.arange(-50., 1001.)]  # positives 1..1000
    assert positive_percentile(values, 0.999) == 999.0
    assert positive_percentile(values, 1.0) == 1000.0
    assert positive_percentile([torch.arange(-3., 0.)], 0.999) == 0.0


def test_off_by_default_and_in_quantize_model():
    for name in ('repq-vit_w4a4', 'aphq-vit_w4a4', 'w4a4'):
        types = [t['type'] for t in
                 resolve_quant_cfg(load_quant_cfg(name))['transforms']]
        assert 'APHQMLPReconstruction' not in types, name
    types = [t['type'] for t in resolve_quant_cfg(
        load_quant_cfg('aphq-vit_w4a4_mlp-recon'))['transforms']]
    assert types == ['APHQMLPReconstruction', 'RepQReparam']
    # quantize_model passes the calibration batches to the transform
    model = Toy()
    _, summary = quantize_model(model, dict(
        w_bits=8, a_bits=8, transforms=[dict(
            type='APHQMLPReconstruction', mlps=r'blocks\.\d+\.mlp',
            iters=2)]), batches(2, seed=3))
    assert [r['target'] for r in summary.transforms] == ['blocks.0.mlp',
                                                         'blocks.1.mlp']
    assert isinstance(model.blocks[1].mlp[1], nn.ReLU)


def test_restore_swaps_the_recorded_activation():
    model = Toy()
    APHQMLPReconstruction.restore(model, dict(
        transform='APHQMLPReconstruction', target='blocks.1.mlp',
        consumers=['blocks.1.mlp.1']))
    assert isinstance(model.blocks[1].mlp[1], nn.ReLU)
    assert isinstance(model.blocks[0].mlp[1], nn.GELU)
