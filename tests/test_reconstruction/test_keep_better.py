"""Keep the better block: a unit whose fit made its output error on the
held-out calibration calls worse is restored to its calibrated state."""
import pytest
import torch

import mmptq  # noqa: F401
from mmptq.reconstruction import QDropReconstruction
from mmptq.reconstruction.block import split_holdout
from helpers import quantized_vit

RECON = dict(type='QDropReconstruction', batch_size=8, resume=False)


def test_a_diverging_fit_is_reverted(tmp_path, caplog):
    """Learning rates 1e4 wreck every unit (or make its loss non-finite):
    each is reverted, so the model is the calibrated one, parameter for
    parameter, and each revert is logged with its errors."""
    _, calibrated, _, _ = quantized_vit(None)
    _, q, summary, _ = quantized_vit(
        dict(RECON, iters=20, lr=1e4, w_lr=1e4, work_dir=str(tmp_path)))
    rows = summary.reconstruction
    assert rows and not any(r['kept'] for r in rows), rows
    for r in rows:
        assert not r['held_after'] <= r['held_before'], r
    ref = calibrated.state_dict()
    for k, v in q.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_a_normal_fit_is_kept_and_never_worse(tmp_path):
    """A normal QDrop fit lowers the held-out error of the transformer
    blocks' units, which are kept; no unit ends worse on its held-out
    calls than calibration left it."""
    _, _, summary, _ = quantized_vit(
        dict(RECON, iters=100, work_dir=str(tmp_path)))
    rows = summary.reconstruction
    blocks = [r for r in rows if r['unit'].startswith('blocks.')]
    assert blocks and all(r['kept'] for r in blocks), blocks
    for r in rows:
        assert r['kept'] == (r['held_after'] <= r['held_before']), r


def test_keep_better_off_keeps_a_worse_fit(tmp_path):
    _, _, summary, _ = quantized_vit(
        dict(RECON, iters=20, lr=1e-1, w_lr=1e2, keep_better=False,
             work_dir=str(tmp_path)))
    assert all(r['kept'] and 'held_before' not in r
               for r in summary.reconstruction)


def test_the_compared_error_includes_the_methods_extra_loss():
    """PD-Quant's prediction term is part of the error keep-the-better
    compares: a local MSE alone would veto a fit made for the prediction."""
    from mmptq.reconstruction.cache import RecordCache
    from mmptq.reconstruction.fit import UnitFitter
    from mmptq.reconstruction.samples import SampleSet

    class WithExtra(QDropReconstruction):

        def extra_loss(self, unit, batch):
            return torch.tensor(0.25)

    torch.manual_seed(0)
    unit = torch.nn.Linear(3, 3)
    cache = RecordCache(64, '/nonexistent')
    x, target = torch.randn(2, 3), torch.randn(2, 3)
    cache.put(0, dict(args=((x, ), {}), fp=None, target=target, index={},
                      extra=None))
    samples = SampleSet(cache, 1)

    def error(method):
        return UnitFitter(unit, method.fit_config(), print,
                          method).error(samples)

    with torch.no_grad():
        mse = float((unit(x) - target).pow(2).sum(-1).mean())
    assert error(QDropReconstruction()) == pytest.approx(mse)
    assert error(WithExtra()) == pytest.approx(mse + 0.25)


def test_split_holdout():
    from mmptq.reconstruction.cache import RecordCache
    from mmptq.reconstruction.samples import SampleSet
    cache = RecordCache(64, '/nonexistent')
    for i in range(8):
        cache.put(i, dict(args=((torch.ones(2, 3), ), {}), fp=None,
                          target=torch.ones(2, 3), index={}, extra=None))
    fit, held = split_holdout(SampleSet(cache, 8), 0.25)
    assert (fit.keys, held.keys) == ([0, 1, 2, 3, 4, 5], [6, 7])
    fit, held = split_holdout(SampleSet(cache, 8), 0.01)
    assert held.keys == [7]
    one = SampleSet(cache, 1)
    assert split_holdout(one, 0.25) == (one, one)
    assert split_holdout(SampleSet(cache, 8), 0.0)[1].keys == list(range(8))


@pytest.mark.parametrize('holdout', [-0.1, 1.0])
def test_bad_holdout(holdout):
    with pytest.raises(ValueError, match='holdout'):
        QDropReconstruction(holdout=holdout)
