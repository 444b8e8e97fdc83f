"""Distributed calibration: observer statistics are synchronised so that
every rank ends with the same quantizer parameters, equal to one process on
the same samples (MinMax exactly, running means to float rounding).

Two CPU processes with the gloo backend on the loopback interface: the unit
part through ``torch.multiprocessing.spawn``, the integration part through
``torchrun`` on the real ``tools/quantize.py``.
"""
import copy
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from e2e_utils import MASK_RCNN_CFG, make_tiny_coco, write_config
from helpers import loopback_env
from torch import nn

import mmptq  # noqa: F401  (registration)
from mmptq.apis import quantize_model
from mmptq.quantizers import UniformQuantizer

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
WORLD = 2
OBSERVERS = ['MinMaxObserver', 'MSEObserver', 'MSEGridObserver',
             'OMSEObserver', 'PercentileSearchObserver', 'EMAMinMaxObserver',
             'PercentileObserver']
EXACT = {'MinMaxObserver'}
RUNNING_MEAN = {'MSEObserver', 'MSEGridObserver', 'OMSEObserver',
                'PercentileSearchObserver'}
EMA = {'EMAMinMaxObserver', 'PercentileObserver'}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# data and models shared by the ranks and the single-process reference
# ---------------------------------------------------------------------------
def batches(seed: int, count: int, shape=(3, 4, 50)) -> list:
    """Heavy-tailed batches with outliers (clipping matters for search)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(shape, generator=gen)
        out.append(x * torch.exp(0.8 * torch.randn(shape, generator=gen)))
    return out


def make_quantizer(observer: str) -> UniformQuantizer:
    # per-channel (3 rows): sync must keep one range per row
    return UniformQuantizer(bits=4, granularity='channel', ch_axis=0,
                            observer=dict(type=observer), name=observer)


def observe(observer: str, data: list) -> UniformQuantizer:
    q = make_quantizer(observer)
    q.observing = True
    for x in data:
        q(x)
    q.observing = False
    return q


def state(q: UniformQuantizer) -> dict:
    obs = q.observer
    return dict(lo=obs.lo.clone(), hi=obs.hi.clone(),
                n=int(obs.num_batches), scale=q.scale.clone(),
                zero_point=q.zero_point.clone())


def sync(q: UniformQuantizer) -> UniformQuantizer:
    q.observer.sync()
    if q.observer.num_batches > 0:
        q.update_qparams()
    return q


class Branchy(nn.Module):
    """Positive batches go through ``pos``, the others through ``neg``: with
    rank 0 fed positive and rank 1 negative batches, each rank leaves one
    branch's quantizers without data."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.stem = nn.Linear(8, 16)
        self.pos = nn.Linear(16, 4)
        self.neg = nn.Linear(16, 4)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.pos(h) if x.sum() > 0 else self.neg(h)


def branchy_batches() -> list:
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(2, 8, generator=gen) for _ in range(6)]
    return [x.abs() if i % 2 == 0 else -x.abs() for i, x in enumerate(data)]


PARALLEL_MINMAX = dict(w_bits=8, a_bits=8,
                       act=dict(observer=dict(type='MinMaxObserver')),
                       calib=dict(mode='parallel'))
PARALLEL_SEARCH = dict(w_bits=4, a_bits=4,
                       act=dict(observer=dict(type='MSEObserver')),
                       calib=dict(mode='parallel'))
SEQUENTIAL_MINMAX = dict(PARALLEL_MINMAX, calib=dict(mode='sequential'))


def qparams(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(('.scale', '.zero_point'))}


# ---------------------------------------------------------------------------
# the spawned ranks
# ---------------------------------------------------------------------------
def _worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ.update(loopback_env(), MMPTQ_TEST_DIR=init_file)
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', init_method=f'file://{init_file}',
                                  rank=rank, world_size=WORLD)
    try:
        results = _rank_checks(rank)
    finally:
        torch_dist.destroy_process_group()
    torch.save(results, osp.join(out_dir, f'rank{rank}.pt'))


def _rank_checks(rank: int) -> dict:
    data = batches(0, 4)
    res = {}
    # every observer: rank r gets batches r, r + 2 (DefaultSampler's shard)
    for name in OBSERVERS:
        res[('shard', name)] = state(sync(observe(name, data[rank::WORLD])))
    # uneven shards: 3 batches against 1
    uneven = data[:3] if rank == 0 else data[3:]
    for name in OBSERVERS:
        res[('uneven', name)] = state(sync(observe(name, uneven)))
    # one rank without data, then no rank with data
    for name in OBSERVERS:
        res[('one_empty', name)] = state(
            sync(observe(name, data[:2] if rank == 0 else [])))
        res[('all_empty', name)] = state(sync(observe(name, [])))
    # a row-count mismatch is an error on every rank (not a hang)
    q = observe('MinMaxObserver',
                [torch.randn(3 if rank == 0 else 2, 10)])
    try:
        q.observer.sync()
        res['mismatch'] = None
    except RuntimeError as e:
        res['mismatch'] = str(e)
    # ranks that built different quantizers: an error on each, not a hang
    other = Branchy() if rank == 0 else nn.Sequential(nn.Linear(8, 4))
    try:
        quantize_model(other, copy.deepcopy(PARALLEL_MINMAX),
                       branchy_batches()[rank::WORLD])
        res['model_mismatch'] = None
    except RuntimeError as e:
        res['model_mismatch'] = str(e)
    # the whole calibration: quantize_model on this rank's shard
    calib = branchy_batches()
    for key, cfg in (('minmax', PARALLEL_MINMAX),
                     ('search', PARALLEL_SEARCH),
                     ('sequential', SEQUENTIAL_MINMAX)):
        model, _ = quantize_model(Branchy(), copy.deepcopy(cfg),
                                  calib[rank::WORLD])
        res[('model', key)] = qparams(model)
        res[('model_enabled', key)] = {
            n: m.enabled for n, m in model.named_modules()
            if isinstance(m, UniformQuantizer)}
    # reconstruction on each rank's shard, gradients averaged: the ranks
    # end with the same weights and steps
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    recon = dict(PARALLEL_MINMAX, w_bits=4, a_bits=4, reconstruction=dict(
        type='QDropReconstruction', iters=10, batch_size=2,
        work_dir=osp.join(osp.dirname(os.environ['MMPTQ_TEST_DIR']),
                          'recon')))
    model, summary = quantize_model(mlp, recon, calib[rank::WORLD])
    res['recon'] = {k: v.clone() for k, v in model.state_dict().items()}
    res['recon_units'] = len(summary.reconstruction)
    return res


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('dist')
    mp.spawn(_worker, args=(str(tmp / 'init'), str(tmp)), nprocs=WORLD,
             join=True)
    return [torch.load(tmp / f'rank{r}.pt', weights_only=False)
            for r in range(WORLD)]


def assert_same_on_ranks(ranks, key):
    a, b = ranks[0][key], ranks[1][key]
    for field in a:
        if isinstance(a[field], torch.Tensor):
            assert torch.equal(a[field], b[field]), (key, field)
        else:
            assert a[field] == b[field], (key, field)


def assert_matches(got: dict, ref: dict, exact: bool, key) -> None:
    assert got['n'] == ref['n'], key
    for field in ('lo', 'hi', 'scale', 'zero_point'):
        if exact or field == 'zero_point':
            assert torch.equal(got[field], ref[field]), (key, field)
        else:
            torch.testing.assert_close(got[field], ref[field], rtol=1e-6,
                                       atol=1e-6, msg=f'{key} {field}')


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
def test_sync_without_distributed_is_noop():
    assert not torch_dist.is_initialized()
    for name in OBSERVERS:
        q = observe(name, batches(0, 2))
        before = state(q)
        after = state(sync(q))
        assert_matches(after, before, True, name)
    empty = sync(observe('MinMaxObserver', []))
    assert empty.observer.num_batches == 0 and not empty.calibrated


@pytest.mark.parametrize('case', ['shard', 'uneven'])
@pytest.mark.parametrize('name', OBSERVERS)
def test_sync_identical_on_ranks(ranks, case, name):
    assert_same_on_ranks(ranks, (case, name))


@pytest.mark.parametrize('case', ['shard', 'uneven'])
@pytest.mark.parametrize('name', sorted(EXACT | RUNNING_MEAN))
def test_sync_equals_single_process(ranks, case, name):
    """MinMax: exact; running means: the single-process mean over the same
    set of batches (seen in another order)."""
    ref = state(observe(name, batches(0, 4)))
    assert_matches(ranks[0][(case, name)], ref, name in EXACT, (case, name))


@pytest.mark.parametrize('name', sorted(EMA))
def test_sync_ema_weighted_mean(ranks, name):
    """EMA observers: the num_batches-weighted mean of the ranks' states,
    which lies between them (not the single-process EMA)."""
    data = batches(0, 4)
    for case, shards in (('shard', [data[0::2], data[1::2]]),
                         ('uneven', [data[:3], data[3:]])):
        local = [state(observe(name, s)) for s in shards]
        n = [s['n'] for s in local]
        got = ranks[0][(case, name)]
        assert got['n'] == sum(n)
        for field in ('lo', 'hi'):
            want = sum(s[field].double() * k for s, k in zip(local, n)) / sum(n)
            torch.testing.assert_close(got[field], want.float(), rtol=1e-6,
                                       atol=1e-6)
            stacked = torch.stack([s[field] for s in local])
            assert (got[field] >= stacked.amin(0) - 1e-6).all()
            assert (got[field] <= stacked.amax(0) + 1e-6).all()


@pytest.mark.parametrize('name', OBSERVERS)
def test_sync_rank_without_data(ranks, name):
    """Rank 1 saw nothing: it still takes part and ends with rank 0's
    state; with no data anywhere the quantizer stays uncalibrated."""
    assert_same_on_ranks(ranks, ('one_empty', name))
    ref = state(observe(name, batches(0, 4)[:2]))
    assert_matches(ranks[1][('one_empty', name)], ref, True, name)
    for r in range(WORLD):
        empty = ranks[r][('all_empty', name)]
        assert empty['n'] == 0 and empty['lo'].numel() == 0
        assert empty['scale'].numel() == 0


def test_sync_mismatch_raises_everywhere(ranks):
    for r in range(WORLD):
        assert 'different numbers of rows' in ranks[r]['mismatch']
        assert 'different quantizers' in ranks[r]['model_mismatch']


@pytest.mark.parametrize('key,cfg', [('minmax', PARALLEL_MINMAX),
                                     ('search', PARALLEL_SEARCH)])
def test_calibrate_parallel_equals_single_process(ranks, key, cfg):
    """quantize_model on two shards == quantize_model on all batches; each
    rank reached only one branch, both end with both calibrated."""
    single, _ = quantize_model(Branchy(), copy.deepcopy(cfg),
                               branchy_batches())
    ref = qparams(single)
    assert ranks[0][('model', key)].keys() == ref.keys()
    for r in range(WORLD):
        got = ranks[r][('model', key)]
        for k in ref:
            if key == 'minmax':
                assert torch.equal(got[k], ref[k]), (r, k)
            else:
                torch.testing.assert_close(got[k], ref[k], rtol=1e-6,
                                           atol=1e-6, msg=f'{r} {k}')
        assert all(ranks[r][('model_enabled', key)].values())
    for k in ref:
        assert torch.equal(ranks[0][('model', key)][k],
                           ranks[1][('model', key)][k]), k


def test_reconstruction_identical_on_ranks(ranks):
    a, b = ranks[0]['recon'], ranks[1]['recon']
    assert ranks[0]['recon_units'] == 2 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_calibrate_sequential_identical_on_ranks(ranks):
    a, b = ranks[0][('model', 'sequential')], ranks[1][('model', 'sequential')]
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for r in range(WORLD):
        assert all(ranks[r][('model_enabled', 'sequential')].values())


# ---------------------------------------------------------------------------
# integration: torchrun + tools/quantize.py vs the same command alone
# ---------------------------------------------------------------------------
QUANT_CFG = """quant_cfg = dict(
    w_bits=8, a_bits=8,
    act=dict(observer=dict(type='MinMaxObserver')),
    calib=dict(mode='parallel', num_samples=4, batch_size=1))
"""


def _fp_checkpoint(config: str, path: str) -> str:
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return path


def _quantize(args: list, out: str, work_dir: str, nproc: int):
    tool = [osp.join('tools', 'quantize.py'), *args, '--out', out,
            '--work-dir', work_dir]
    if nproc > 1:
        # runner_type: mmengine's own launcher needs CUDA (see
        # mmptq.engine.runner); CPUDistRunner runs it with gloo
        cmd = [sys.executable, '-m', 'torch.distributed.run',
               f'--nproc_per_node={nproc}', '--nnodes=1',
               '--master_addr=127.0.0.1', f'--master_port={free_port()}',
               *tool, '--launcher', 'pytorch', '--cfg-options',
               'env_cfg.dist_cfg.backend=gloo',
               'runner_type=mmptq.CPUDistRunner']
    else:
        cmd = [sys.executable, *tool]
    # one thread in both runs: the same float summation order, bit-equal
    # activations, so that the ranges can be compared exactly
    env = dict(loopback_env(), PYTHONWARNINGS='ignore')
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(cmd)}\n{output[-4000:]}'
    return output


def test_torchrun_quantize_equals_single_process(tmp_path):
    """tools/quantize.py under torchrun (2 ranks × 2 samples, each its own
    DefaultSampler shard) saves the same quantizer buffers as the same
    command in one process on the 4 samples."""
    data = tmp_path / 'data'
    data.mkdir()
    make_tiny_coco(str(data))
    config = write_config(str(tmp_path / 'mask_rcnn.py'), MASK_RCNN_CFG,
                          root=str(data))
    fp = _fp_checkpoint(config, str(tmp_path / 'fp.pth'))
    qcfg = tmp_path / 'minmax_parallel.py'
    qcfg.write_text(QUANT_CFG)
    args = [config, fp, '--quant-cfg', str(qcfg)]
    single = _quantize(args, str(tmp_path / 'q1.pth'), str(tmp_path / 'w1'),
                       nproc=1)
    multi = _quantize(args, str(tmp_path / 'q2.pth'), str(tmp_path / 'w2'),
                      nproc=WORLD)
    # 4 batches alone; 2 per rank (rank 0 logs) under torchrun
    assert 'quantizers on 4 batches (parallel)' in single, single[-3000:]
    assert 'quantizers on 2 batches (parallel)' in multi, multi[-3000:]
    a = torch.load(tmp_path / 'q1.pth', weights_only=False)['state_dict']
    b = torch.load(tmp_path / 'q2.pth', weights_only=False)['state_dict']
    keys = [k for k in a if k.endswith(('.scale', '.zero_point'))]
    assert sum(k.endswith('input_quantizer.scale') for k in keys) > 20
    assert set(keys) == {k for k in b if k.endswith(('.scale', '.zero_point'))}
    differ = [k for k in keys if not torch.equal(a[k], b[k])]
    assert not differ, differ
