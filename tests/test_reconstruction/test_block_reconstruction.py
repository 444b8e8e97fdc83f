"""Block reconstruction: AdaRound numerics, partition, cache, resume, and
the effect each method exists for (lower block output error)."""
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import mmptq  # noqa: F401
from mmptq.apis import quantize_model
from mmptq.nn.modules import QuantWeightMixin
from mmptq.quantizers import AdaRoundQuantizer, BaseQuantizer, UniformQuantizer
from mmptq.reconstruction import (BlockReconstruction, BRECQReconstruction,
                                  QDropReconstruction, RecordCache,
                                  find_units)
from mmptq.reconstruction.block import BASE_DEFAULTS, input_gap
from mmptq.reconstruction.capture import quantization_off
from mmptq.reconstruction.pdquant import correct_distribution
from mmptq.reconstruction.qdrop import activation_drop
from helpers import BACKBONES, quantized_vit
from toy_models import TinyCNN

TESTS = osp.dirname(osp.dirname(osp.abspath(__file__)))


def calibrated(bits=4, observer='MinMaxObserver', granularity='channel',
               shape=(6, 64)):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    q = UniformQuantizer(bits=bits, granularity=granularity,
                         observer=dict(type=observer))
    q.observing = True
    q(w)
    q.observing = False
    return q, w


# -- AdaRound ------------------------------------------------------------
@pytest.mark.parametrize('granularity', ['tensor', 'channel'])
def test_adaround_init_reproduces_fp_weights(granularity):
    q, w = calibrated(granularity=granularity)
    ada = AdaRoundQuantizer.from_uniform(q, w)
    s = ada.broadcast(ada.scale, w)
    z = ada.broadcast(ada.zero_point, w)
    # inside the grid's range (the rounded zero-point can put min / max
    # up to s/2 outside it, where both quantizers clip)
    inside = (w / s + z >= 0) & (w / s + z <= 15)
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(ada(w)[inside], w[inside], rtol=0,
                               atol=float(s.max()) * 1e-5)
    # the rectified sigmoid (Eq. 23) equals the fractional part of W/s
    frac = w / s - torch.floor(w / s)
    torch.testing.assert_close(ada.rounding()[inside], frac[inside], rtol=0,
                               atol=1e-5)


def test_adaround_group_granularity_and_shape_check():
    w = torch.randn(4, 6)
    q2 = UniformQuantizer(bits=4, granularity='group', group_size=3)
    q2.observing = True
    q2(w)
    q2.observing = False
    ada = AdaRoundQuantizer.from_uniform(q2, w)
    s = ada.broadcast(ada.scale, w)
    z = ada.broadcast(ada.zero_point, w)
    inside = (w / s + z >= 0) & (w / s + z <= 15)
    torch.testing.assert_close(ada(w)[inside], w[inside], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='set up for a weight of shape'):
        ada(torch.zeros(2, 6))


def test_adaround_hard_rounding_and_regularizer():
    q, w = calibrated()
    ada = AdaRoundQuantizer.from_uniform(q, w)
    with torch.no_grad():
        ada.alpha.copy_(torch.linspace(-3, 3, w.numel()).reshape(w.shape))
    h = (torch.sigmoid(ada.alpha) * 1.2 - 0.1).clamp(0, 1)
    beta = 4.0
    expected = (1 - (2 * h - 1).abs().pow(beta)).sum()
    torch.testing.assert_close(ada.regularizer(beta), expected)
    ada.soft = False
    s = ada.broadcast(ada.scale, w)
    z = ada.broadcast(ada.zero_point, w)
    up = (ada.alpha >= 0).float()
    ref = (torch.clamp(torch.floor(w / s) + up + z, 0, 15) - z) * s
    torch.testing.assert_close(ada(w), ref)
    assert ada.regularizer(beta) == 0  # hard h ∈ {0, 1}


def test_adaround_needs_calibrated_quantizer():
    with pytest.raises(RuntimeError, match='calibrated'):
        AdaRoundQuantizer.from_uniform(UniformQuantizer(bits=4),
                                       torch.zeros(2, 2))


# -- partition -----------------------------------------------------------
def test_partition_of_a_vit_splits_attention_and_mlp():
    _, q, _, _ = quantized_vit()
    assert find_units(q) == [
        'patch_embed', 'blocks.0.attn', 'blocks.0.mlp', 'blocks.1.attn',
        'blocks.1.mlp', 'mha', 'head'
    ]
    assert find_units(q, partition=[r'blocks\.\d']) == [
        'patch_embed', 'blocks.0', 'blocks.1', 'mha', 'head'
    ]
    layerwise = find_units(q, layerwise=True)
    assert 'blocks.0.attn.qkv' in layerwise and 'blocks.0.mlp.2' in layerwise
    assert all(isinstance(q.get_submodule(n), QuantWeightMixin)
               for n in layerwise)


# -- the effect ----------------------------------------------------------
RECON = dict(iters=60, batch_size=8, resume=False)


@pytest.mark.parametrize('method', [
    'AdaRoundReconstruction', 'BRECQReconstruction', 'QDropReconstruction',
    'PDQuantReconstruction'
])
def test_reconstruction_lowers_block_error_and_weights_on_grid(
        method, tmp_path):
    recon = dict(RECON, type=method, work_dir=str(tmp_path), iters=200)
    _, q, summary, data = quantized_vit(recon)
    rows = summary.reconstruction
    assert [r['unit'] for r in rows] == find_units(
        q, layerwise=method == 'AdaRoundReconstruction')
    # the transformer blocks' units end with a lower output error than
    # nearest rounding with calibrated steps (on the same recorded inputs,
    # no drop), and so does the sum over all units
    for row in rows:
        if row['unit'].startswith('blocks.'):
            assert row['mse_after'] < row['mse_before'], row
    assert sum(r['mse_after'] for r in rows) < sum(r['mse_before']
                                                   for r in rows)
    # every quantized weight of a kept unit is a point of its quantizer's
    # integer grid (a reverted unit keeps its FP weights, rounded to
    # nearest by its quantizer)
    reverted = tuple(r['unit'] + '.' for r in rows if not r['kept'])
    for name, m in q.named_modules():
        if (name + '.').startswith(reverted):
            continue
        if isinstance(m, QuantWeightMixin) and m.weight_quantizer is not None:
            wq = m.weight_quantizer
            assert type(wq) is UniformQuantizer
            s = wq.broadcast(wq.scale, m.weight)
            z = wq.broadcast(wq.zero_point, m.weight)
            codes = m.weight / s + z
            torch.testing.assert_close(codes, codes.round(), rtol=0,
                                       atol=1e-3)
            assert codes.round().min() >= wq.quant_min
            assert codes.round().max() <= wq.quant_max
    # no drop at evaluation: the fit's drop hooks are gone and the
    # quantizers are deterministic
    assert all(not m._forward_hooks for m in q.modules()
               if isinstance(m, BaseQuantizer))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(q(x), q(x), rtol=0, atol=0)


def test_activation_drop_replaces_elements_by_fp():
    q, w = calibrated(granularity='tensor')
    x = torch.randn(10000)
    quantized = q(x)
    with activation_drop([q], 0.5):
        out = q(x)
    kept_fp = (out == x) & (quantized != x)
    frac = kept_fp.float().sum() / (quantized != x).float().sum()
    # binomial(n ≈ 10^4, 0.5): 0.45..0.55 is more than 10 standard deviations
    assert 0.45 < float(frac) < 0.55
    assert torch.all((out == x) | (out == quantized))
    torch.testing.assert_close(q(x), quantized, rtol=0, atol=0)  # off again


# -- cache, resume, errors ------------------------------------------------
def test_record_cache_spills_past_budget(tmp_path):
    cache = RecordCache(budget_mb=1, spill_dir=str(tmp_path / 'c'))
    small = dict(x=torch.ones(10))
    big = (torch.arange(2**19, dtype=torch.float32), 3)  # 2 MiB
    cache.put('a', small)
    cache.put('b', big)
    assert not cache.is_spilled('a') and cache.is_spilled('b')
    assert cache.used == 40
    torch.testing.assert_close(cache.get('b')[0], big[0])
    assert cache.get('b')[1] == 3
    cache.pop('b')
    assert not osp.exists(str(tmp_path / 'c' / '0.pt'))
    cache.clear()
    assert 'a' not in cache


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_spilled_cache_gives_the_same_result(tmp_path):
    recon = dict(RECON, type='QDropReconstruction', iters=20)
    _, a, sa, _ = quantized_vit(dict(recon, work_dir=str(tmp_path / 'a')))
    _, b, sb, _ = quantized_vit(
        dict(recon, work_dir=str(tmp_path / 'b'), cache_budget_mb=0))
    assert all(r['spilled'] > 0 for r in sb.reconstruction)
    pa, pb = params(a), params(b)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


SCRIPT = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {tests!r})
    import torch
    from mmptq.reconstruction import ReconstructionState
    from helpers import quantized_vit
    kill_after = int(sys.argv[2])
    if kill_after:
        save = ReconstructionState.save
        def save_then_die(self, name, unit):
            save(self, name, unit)
            if len(self.done) == kill_after:
                os.kill(os.getpid(), 9)
        ReconstructionState.save = save_then_die
    recon = dict(type='QDropReconstruction', iters=20, batch_size=8,
                 work_dir=sys.argv[1])
    _, q, summary, _ = quantized_vit(recon)
    torch.save(q.state_dict(), os.path.join(sys.argv[1], 'final.pth'))
''')


def test_killed_run_resumes_to_identical_parameters(tmp_path):
    script = tmp_path / 'run.py'
    script.write_text(SCRIPT.format(tests=TESTS))

    def run(work_dir, kill_after):
        return subprocess.run(
            [sys.executable, str(script), str(work_dir), str(kill_after)],
            capture_output=True, text=True, timeout=600)

    full = run(tmp_path / 'full', 0)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run(tmp_path / 'resumed', 3)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / 'resumed' / 'final.pth').exists()
    resumed = run(tmp_path / 'resumed', 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (resumed.stdout + resumed.stderr).count('resumed from') == 3
    a = torch.load(tmp_path / 'full' / 'final.pth')
    b = torch.load(tmp_path / 'resumed' / 'final.pth')
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_other_settings_do_not_resume(tmp_path):
    """State is kept per run fingerprint and removed once a run is done;
    another configuration never picks up a killed run's units."""
    recon = dict(RECON, type='QDropReconstruction', iters=5,
                 work_dir=str(tmp_path), resume=True)
    quantized_vit(recon)
    assert os.listdir(tmp_path / 'reconstruction') == []
    from mmptq.reconstruction import ReconstructionState
    state = ReconstructionState(str(tmp_path / 'reconstruction' / 'x'), True)
    state.save('patch_embed', nn.Linear(2, 2))
    again = ReconstructionState(str(tmp_path / 'reconstruction' / 'x'), True)
    assert again.done == ['patch_embed']
    fresh = ReconstructionState(str(tmp_path / 'reconstruction' / 'x'), False)
    assert fresh.done == []


@pytest.mark.parametrize('cls,kwargs,match', [
    (BlockReconstruction, dict(iter=5), "unknown key 'iter'.*iters"),
    (BlockReconstruction, dict(phases=['weight']), 'phases'),
    (BlockReconstruction, dict(iters=0), 'positive integer'),
    (QDropReconstruction, dict(drop_prob=1.0), r'drop_prob=1.0 must be in'),
    (BRECQReconstruction, dict(drop_prob=0.5), "unknown key 'drop_prob'"),
])
def test_bad_reconstruction_config(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_blocks_selects_units(tmp_path):
    recon = dict(RECON, type='QDropReconstruction', iters=5,
                 work_dir=str(tmp_path), blocks=r'blocks\.0\..*')
    _, _, summary, _ = quantized_vit(recon)
    assert [r['unit'] for r in summary.reconstruction] == [
        'blocks.0.attn', 'blocks.0.mlp'
    ]
    with pytest.raises(ValueError, match='matches no unit'):
        quantized_vit(dict(recon, blocks='nothing'))


def test_pd_loss_needs_a_classifier(tmp_path):

    class Features(nn.Module):

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)  # (N, C, H, W): no class logits

    data = [torch.randn(2, 3, 8, 8)]
    with pytest.raises(ValueError, match='needs a classifier'):
        quantize_model(
            Features().eval(),
            dict(w_bits=4, a_bits=4,
                 reconstruction=dict(type='PDQuantReconstruction', iters=2,
                                     work_dir=str(tmp_path))), data)


def test_input_gap_of_rois_with_two_boxes_swapped_is_no_twin():
    """RoI features of 20 boxes where the quantized model swapped two:
    the whole-tensor distance (0.27) is under match_tol (0.5), the largest
    row's is 2.7 mean rows; a small perturbation of every row stays a twin,
    with the closed-form gap max_r ‖δ_r‖² / mean_r ‖x_r‖²."""
    torch.manual_seed(0)
    fp = torch.randn(20, 8, 4, 4)
    q = fp.clone()
    q[[3, 7]] = fp[[7, 3]]
    whole = float((q - fp).pow(2).sum() / fp.pow(2).sum())
    assert whole < BASE_DEFAULTS['match_tol'] < 1.0
    assert input_gap(((fp, ), {}), ((q, ), {})) > 1.0
    delta = 0.1 * torch.randn_like(fp)
    expected = float(delta.pow(2).flatten(1).sum(1).max() /
                     fp.pow(2).flatten(1).sum(1).mean())
    assert input_gap(((fp, ), {}), ((fp + delta, ), {})) == pytest.approx(
        expected)
    assert input_gap(((fp, ), {}), ((fp[:19], ), {})) == float('inf')


def test_pd_loss_on_a_detector_fails_before_calibration(tmp_path):
    """mmdet's two-stage tensor forward fails without data samples: the
    error names PD-Quant's need and comes before anything is wrapped."""
    pytest.importorskip('mmdet')
    from mmptq.apis.analyze import build_random_model, synthetic_batch
    from mmptq.core.quantize import find_quantizers
    model, scope = build_random_model(
        'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')
    with pytest.raises(ValueError, match='needs a classifier.*MaskRCNN '
                       'fails in it'):
        quantize_model(
            model, dict(w_bits=4, a_bits=4, reconstruction=dict(
                type='PDQuantReconstruction', work_dir=str(tmp_path))),
            [synthetic_batch(scope, 1, (64, 64), seed=0)])
    assert find_quantizers(model) == []


def test_distribution_correction_moves_bn_statistics():
    """PD-Quant's DC: the corrected input brings the BN input statistics
    closer to the BN running statistics, staying near the input."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
    block.eval()
    with torch.no_grad():
        block[1].running_mean.uniform_(-1, 1)
        block[1].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 8, 8)

    def gap(inp):
        feat = block[0](inp)
        flat = feat.reshape(4, 8, -1)
        return float((flat.mean(2) - block[1].running_mean).pow(2).sum() +
                     ((flat.var(2) + 1e-6).sqrt() -
                      (block[1].running_var + 1e-6).sqrt()).pow(2).sum())

    (args, kwargs), target = correct_distribution(block, ((x, ), {}), 200,
                                                  1e-2, 0.02)
    assert gap(args[0]) < gap(x)
    assert float((args[0] - x).abs().mean()) < 0.5
    with torch.no_grad():
        torch.testing.assert_close(target, block(args[0]))
    assert correct_distribution(nn.Linear(2, 2), ((x, ), {}), 1, 1e-3,
                                0.02) is None


def test_quantization_off_restores_flags():
    _, q, _, _ = quantized_vit()
    qs = [m for m in q.modules() if isinstance(m, BaseQuantizer)]
    qs[0].enabled = False
    with quantization_off(q):
        assert not any(m.enabled for m in qs)
    assert not qs[0].enabled and all(m.enabled for m in qs[1:])


def test_cnn_partition_and_bn_model(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    data = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    q, summary = quantize_model(
        model, dict(w_bits=4, a_bits=4, reconstruction=dict(
            type='PDQuantReconstruction', iters=10, batch_size=4,
            dc_iters=5, work_dir=str(tmp_path))), data)
    assert [r['unit'] for r in summary.reconstruction] == [
        'features.0', 'features.3', 'features.5', 'features.7', 'head'
    ]


def test_partition_of_mm_backbones():
    """Transformer blocks of mmdet / mmpretrain / mmseg backbones split
    into attention and MLP units; ResNet blocks are units."""
    from mmengine.registry import init_default_scope

    cases = dict(BACKBONES)
    cases['mmdet ResNet'] = ('mmdet', dict(type='ResNet', depth=18,
                                           base_channels=8), (1, 3, 32, 32))
    for name, (scope, cfg, shape) in cases.items():
        registry = pytest.importorskip(f'{scope}.registry')
        init_default_scope(scope)
        torch.manual_seed(0)
        model = registry.MODELS.build(cfg)
        model.eval()  # mmdet's ResNet.train returns None
        quantize_model(model, dict(w_bits=8, a_bits=8),
                       [torch.randn(*shape)])
        units = find_units(model)
        blocks = [n for n, m in model.named_modules() if type(m).__name__ in
                  ('SwinBlock', 'TransformerEncoderLayer', 'BasicBlock')]
        assert blocks, name
        for block in blocks:
            inside = [u for u in units if u.startswith(block + '.')]
            if type(model.get_submodule(block)).__name__ == 'BasicBlock':
                assert block in units and not inside, (name, block)
            else:
                kinds = sorted(u.rsplit('.', 1)[1] for u in inside)
                assert kinds in (['attn', 'ffn'], ['attn', 'mlp']), (
                    name, block, inside)
        covered = {n for n, m in model.named_modules()
                   if isinstance(m, QuantWeightMixin)}
        in_units = {n for n in covered
                    if any(n == u or n.startswith(u + '.') for u in units)}
        assert in_units == covered, (name, covered - in_units)


def test_tools_run_reconstruction_on_the_demo_deit(tmp_path):
    """As a user runs it: tools/quantize.py with a reconstruction preset
    (its per-unit progress goes to the work_dir log), then tools/test.py
    evaluates the saved quantized checkpoint without reconstructing
    again."""
    from e2e_utils import REPO_ROOT, ok, results, run_tool
    from mmptq.apis.benchmark import demo_models
    if not osp.isfile(osp.join(REPO_ROOT, 'data', 'mnist_cls',
                               'manifest.json')):
        pytest.fail('data/mnist_cls is missing: `make test` builds it')
    spec, = demo_models(['deit'])
    out = tmp_path / 'deit_qdrop.pth'
    proc = ok(run_tool(
        'quantize', spec.config, spec.checkpoint, '--quant-cfg',
        'qdrop_w4a4', '--calib-samples', '64', '--out', out, '--work-dir',
        tmp_path / 'q', '--cfg-options', 'quant_cfg.reconstruction.iters=8',
        r'quant_cfg.reconstruction.blocks=backbone\.layers\.0\..*',
        timeout=600))
    assert 'reconstruction [2/2] backbone.layers.0.ffn' in proc.output
    assert 'QDropReconstruction' in proc.output  # the logged quant_cfg
    proc = ok(run_tool('test', spec.config, out, '--work-dir', tmp_path / 't',
                       timeout=600))
    assert 'reconstruction [' not in proc.output
    res = results(str(tmp_path / 't'))
    assert [r['unit'] for r in res['reconstruction']] == [
        'backbone.layers.0.attn', 'backbone.layers.0.ffn'
    ]
    assert res['metrics']['accuracy/top1'] > 85
