"""Mixed precision under a budget: the integer program against brute force
and greedy, the fragile layer gets more bits, the written quant_cfg
round-trips through ``--quant-cfg``."""
import itertools
import json
import os.path as osp
import random
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from mmptq.apis import load_quant_cfg, quantize_model, resolve_quant_cfg
from mmptq.apis.sensitivity import (allocate_bits, config_cost,
                                    measure_sensitivity, output_probes,
                                    write_sensitivity)
from mmptq.core import Unit, allocate, extrapolate
from mmptq.core.mixed_precision import solve_greedy, solve_milp

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                            'test_core'))
from test_sensitivity import FragileMLP, batches  # noqa: E402


def random_units(rng: random.Random, n: int, k: int):
    """n units of k options; cost increasing and value decreasing in the
    option index (more bits: dearer, less damage), with random steps."""
    units = []
    for i in range(n):
        costs = sorted(rng.uniform(0.1, 10) for _ in range(k))
        values = sorted((rng.uniform(0, 5) for _ in range(k)), reverse=True)
        units.append(Unit(f'u{i}', [(b, b) for b in range(k)], values,
                          costs, []))
    return units


def brute_force(units, budget):
    best = None
    for choice in itertools.product(*(range(len(u.options))
                                      for u in units)):
        cost = sum(u.costs[j] for u, j in zip(units, choice))
        value = sum(u.values[j] for u, j in zip(units, choice))
        if cost <= budget and (best is None or value < best):
            best = value
    return best


def value_cost(units, choice):
    return (sum(u.values[j] for u, j in zip(units, choice)),
            sum(u.costs[j] for u, j in zip(units, choice)))


@pytest.mark.parametrize('seed', range(30))
def test_milp_is_optimal_and_never_worse_than_greedy(seed):
    rng = random.Random(seed)
    units = random_units(rng, rng.randint(2, 5), rng.randint(2, 4))
    cheapest = sum(min(u.costs) for u in units)
    dearest = sum(max(u.costs) for u in units)
    budget = rng.uniform(cheapest, dearest)
    milp_value, milp_cost = value_cost(units, solve_milp(units, budget))
    greedy_value, greedy_cost = value_cost(units, solve_greedy(units, budget))
    assert milp_cost <= budget + 1e-9 and greedy_cost <= budget + 1e-9
    assert milp_value == pytest.approx(brute_force(units, budget), abs=1e-9)
    assert milp_value <= greedy_value + 1e-9


def test_budget_met_exactly_where_reachable():
    """Budget equal to an allocation's cost: the ILP spends it exactly (the
    cost of the optimum), never more; below the cheapest: an error."""
    units = [Unit(f'u{i}', [(4, 4), (8, 8)], [1.0 + i, 0.0], [4.0, 8.0], [])
             for i in range(3)]
    choice, solver = allocate(units, 16.0)
    assert solver == 'milp'
    assert value_cost(units, choice) == (3.0, 16.0)  # u2 (the worst) at 8
    assert choice == [0, 0, 1]
    with pytest.raises(ValueError, match='below the cheapest'):
        allocate(units, 11.0, solver='greedy')
    # milp without a solution falls back to greedy, which says why
    with pytest.raises(ValueError, match='below the cheapest'):
        allocate(units, 11.0)


def mp_cfg(**mp):
    return dict(w_bits=4, a_bits=4,
                mixed_precision=dict(dict(budget='W5A5'), **mp))


@pytest.mark.parametrize('metric, measure', [
    ('bops', 'lowest'), ('bops', 'each'), ('size', 'lowest'),
    ('avg_bits', 'lowest')])
def test_fragile_layer_gets_more_bits(metric, measure, tmp_path):
    model = FragileMLP().eval()
    data = batches()
    out = tmp_path / 'mp.py'
    alloc = allocate_bits(model, data, mp_cfg(metric=metric,
                                              measure=measure), str(out))
    assert [r.bits for r in alloc.results] == \
        ([4, 6, 8] if measure == 'each' else [4])
    assert alloc.solver == 'milp'
    assert alloc.cost <= alloc.budget * (1 + 1e-9)
    bits = {u.name: u.options[j] for u, j in zip(alloc.units, alloc.choice)}
    if metric == 'bops':
        # fc3's input (the outlier channel) gets the most activation bits
        assert bits['fc3'][1] == 8
        assert bits['fc3'][1] > min(b[1] for b in bits.values())
    else:  # weights only: activations keep a_bits=4
        assert all(a is None for _, a in bits.values())
    # uniform W5A5 costs the budget; the cost is that of the written file
    uniform = dict(w_bits=5, a_bits=5)
    first_op = alloc.results[0].summary.first_op
    assert config_cost(alloc.units, uniform, first_op, metric) == \
        pytest.approx(alloc.budget)
    assert config_cost(alloc.units, load_quant_cfg(str(out)), first_op,
                       metric) == pytest.approx(alloc.cost)


def test_separate_weight_and_activation_candidates():
    """a_candidates=(4, 6, 8), w_candidates=(3, 4, 6, 8) at the BOPs of
    W4A4: no activation below 4 bits; the bits any activation gets above
    4 are paid for by 3-bit weights (the budget is that of uniform W4A4)."""
    alloc = allocate_bits(FragileMLP().eval(), batches(), mp_cfg(
        budget='W4A4', w_candidates=(3, 4, 6, 8), a_candidates=(4, 6, 8)))
    assert [r.bits for r in alloc.results] == [3]  # the lowest of both
    bits = [u.options[j] for u, j in zip(alloc.units, alloc.choice)]
    assert all(a in (4, 6, 8) and w in (3, 4, 6, 8) for w, a in bits)
    assert {o for u in alloc.units for o in u.options} == {
        (w, a) for w in (3, 4, 6, 8) for a in (4, 6, 8)}
    assert bits[2][1] > 4  # fc3's input, the outlier, above the floor
    assert min(w for w, _ in bits) == 3
    assert alloc.cost <= alloc.budget * (1 + 1e-9)


def mse_to_fp(model):
    """loss(qmodel): batch → mean squared error to the FP FragileMLP."""
    fp = FragileMLP().eval()

    def make(qmodel):
        def loss(batch):
            with torch.no_grad():
                want = fp(batch)
            return (qmodel(batch) - want).pow(2).mean()
        return loss

    return make


def test_hessian_objective():
    """objective='hessian': the weights are valued by HAWQ-V2's Ω/2
    (Hutchinson trace), extrapolated by 4^(b0 − b); activations by their
    loss increase (clipped at 0)."""
    model = FragileMLP().eval()
    with pytest.raises(ValueError, match='task loss'):
        allocate_bits(model, batches(), mp_cfg(objective='hessian'))
    alloc = allocate_bits(model, batches(), mp_cfg(
        objective='hessian', hutchinson=2, candidates=(4, 8)),
        loss=mse_to_fp(model))
    rows = {r['key']: r for r in alloc.results[0].rows}
    assert alloc.results[0].hessian_s > 0
    assert rows['fc1:act']['hessian'] is None
    assert all(rows[f'fc{i}:weight']['hessian'] > 0 for i in range(1, 5))
    unit = next(u for u in alloc.units if u.name == 'fc2')
    for (w, a), value in zip(unit.options, unit.values):
        f_w, f_a = 4.0**(4 - w), 4.0**(4 - a)
        assert value == pytest.approx(
            rows['fc2:weight']['hessian'] / 2 * f_w
            + max(rows['fc2:act']['loss_increase'], 0) * f_a)


class Detector(nn.Module):
    """The attributes output_probes looks at: a data preprocessor, a neck,
    a dense head and, two-stage, an RPN and a RoI head."""

    def __init__(self, two_stage: bool) -> None:
        super().__init__()
        self.data_preprocessor = nn.Identity()
        self.backbone, self.neck = nn.Linear(2, 2), nn.Linear(2, 2)
        if two_stage:
            self.rpn_head, self.roi_head = nn.Linear(2, 2), nn.Linear(2, 2)
        else:
            self.bbox_head = nn.Linear(2, 2)


def test_output_probes():
    """The neck and the dense head (one-stage) or the RPN (two-stage: the
    neck is the RoI head's input); a plain module: itself."""
    one = Detector(two_stage=False)
    assert output_probes(one) == [one.neck, one.bbox_head]
    two = Detector(two_stage=True)
    assert output_probes(two) == [two.neck, two.rpn_head]
    plain = FragileMLP()
    assert output_probes(plain) == [plain]


class WithUnseenBranch(FragileMLP):
    """FragileMLP plus a layer whose output the compared output does not
    see (as a RoI head behind the probes of a detector)."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(16, 64)

    def forward(self, x):
        self.aux(x)
        return super().forward(x)


def test_unseen_units_keep_their_bits():
    """A unit with no measured damage is not free: it takes the bits of
    the budget's uniform setting (W5A5) and its cost counts against the
    budget."""
    alloc = allocate_bits(WithUnseenBranch().eval(), batches(), mp_cfg())
    overrides = {o.get('name'): o for o in alloc.quant_cfg['overrides']}
    assert overrides['aux'] == dict(name='aux', w_bits=5, a_bits=5)
    assert 'aux' not in [u.name for u in alloc.units]
    aux_cost = 16 * 64 * 5 * 5 / 1e9  # MACs per image x w_bits x a_bits
    seen = sum(u.costs[j] for u, j in zip(alloc.units, alloc.choice))
    assert alloc.cost == pytest.approx(seen + aux_cost)
    assert alloc.cost <= alloc.budget * (1 + 1e-9)


def test_written_quant_cfg_round_trips(tmp_path):
    model = FragileMLP().eval()
    data = batches()
    out = tmp_path / 'mp.py'
    alloc = allocate_bits(model, data, mp_cfg(), str(out))
    text = out.read_text()
    assert text.startswith('# mixed precision')
    cfg = load_quant_cfg(str(out))
    assert cfg['mixed_precision'] is None
    assert resolve_quant_cfg(cfg)['overrides'] == alloc.quant_cfg['overrides']
    _, summary = quantize_model(FragileMLP().eval(), cfg, data)
    got = {r['name']: (r['w_bits'], r['a_bits']) for r in summary}
    want = {u.name: u.options[j] for u, j in zip(alloc.units, alloc.choice)}
    assert got == want
    # the same file through the command line loader (--quant-cfg PATH)
    code = ('from mmengine.config import Config\n'
            'from mmptq.core import merge_quant_cfg\n'
            f'cfg = merge_quant_cfg(Config(dict()), {str(out)!r})\n'
            'print(cfg["overrides"][0]["name"], cfg["mixed_precision"])\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [alloc.quant_cfg['overrides'][0]['name'],
                                   'None']


def test_extrapolate():
    """Bits not measured: noise and loss increase ×4^(b0 − b), SQNR +6.02
    dB per bit; measured ones are kept."""
    rows = [dict(sensitivity={4: dict(noise=0.16, sqnr=7.96, loss_increase=
                                      0.32),
                              8: dict(noise=1e-9, sqnr=90.0,
                                      loss_increase=None)})]
    extrapolate(rows, (4, 5, 6, 8))
    sens = rows[0]['sensitivity']
    assert sens[5]['noise'] == pytest.approx(0.04)
    assert sens[6]['loss_increase'] == pytest.approx(0.02)
    assert sens[6]['sqnr'] == pytest.approx(7.96 + 2 * 6.0206)
    assert sens[8]['noise'] == 1e-9
    # HAWQ-V2's Ω scales with ‖Q(W) − W‖², by the same 4^(b0 − b)
    rows = [dict(sensitivity={3: dict(noise=0.1, sqnr=10.0,
                                      loss_increase=None, hessian=2.0)})]
    extrapolate(rows, (3, 4, 6))
    assert rows[0]['sensitivity'][6]['hessian'] == pytest.approx(2.0 / 64)


def test_sensitivity_report(tmp_path):
    result = measure_sensitivity(FragileMLP().eval(), batches(),
                                 dict(w_bits=4, a_bits=4), bits=4)
    assert result.cost_ratio > 1
    paths = write_sensitivity(result, str(tmp_path))
    table = open(paths['md']).read()
    # forward order: fc1 first, fc4 last; fc3:act the lowest SQNR
    names = re.findall(r'^\| \d+ \| (\S+) \| (\w+) ', table, re.M)
    assert names[0] == ('fc1', 'weight') and names[-1] == ('fc4', 'act')
    assert min(result.rows, key=lambda r: r['sqnr'])['key'] == 'fc3:act'
    assert open(paths['png'], 'rb').read(4) == b'\x89PNG'


@pytest.mark.parametrize('value, match', [
    (dict(), 'budget'),
    (dict(budget='W5'), 'budget'),
    (dict(budget=-1), 'budget'),
    (dict(budget=5, metric='latency'), 'metric'),
    (dict(budget=5, candidates=(1, 4)), 'bits=1'),
    (dict(budget=5, bugdet=4), 'unknown key'),
    (dict(budget=5, a_candidates=()), 'a_candidates'),
    (dict(budget=5, w_candidates=(1, 4)), 'bits=1'),
    (dict(budget=5, objective='hessian', hutchinson=0), 'hutchinson'),
    ('W5A5', 'must be a dict'),
])
def test_config_errors(value, match):
    with pytest.raises(ValueError, match=match):
        resolve_quant_cfg(dict(mixed_precision=value))


def test_config_defaults():
    mp = resolve_quant_cfg(dict(mixed_precision=dict(
        budget=4.5, metric='avg_bits', candidates=[8, 4])))['mixed_precision']
    assert mp['candidates'] == (4, 8) and mp['solver'] == 'milp'
    assert mp['w_candidates'] == mp['a_candidates'] == (4, 8)
    # own lists for weights and activations; candidates: what is measured
    mp = resolve_quant_cfg(dict(mixed_precision=dict(
        budget='W4A4', w_candidates=(3, 4, 8), a_candidates=[6, 4])))[
            'mixed_precision']
    assert (mp['w_candidates'], mp['a_candidates'], mp['candidates']) == \
        ((3, 4, 8), (4, 6), (3, 4, 6, 8))
    assert resolve_quant_cfg(None)['mixed_precision'] is None


def test_tool_sensitivity_and_allocation(tmp_path):
    """tools/analyze.py --sensitivity --budget on a demo config (random
    weights, synthetic images): a table, JSON and plot per candidate, and
    a quant_cfg whose overrides name every quantized layer of the model."""
    config = 'configs/demo/deit-mini_mnist-cls.py'
    proc = subprocess.run(
        [sys.executable, 'tools/analyze.py', config, '--quant-cfg', 'w4a4',
         '--sensitivity', '--budget', 'W6A6', '--candidates', '4', '8',
         '--size', '32', '32', '--calib-batches', '2', '--work-dir',
         str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ext in ('md', 'json', 'png'):  # measured at 4 bits only
        assert (tmp_path / f'sensitivity_4bit.{ext}').is_file()
    assert not (tmp_path / 'sensitivity_8bit.md').exists()
    rows = json.loads((tmp_path / 'sensitivity_4bit.json').read_text())
    kinds = {r['layer_kind'] for r in rows['rows']}
    assert {'linear', 'qk', 'softmax', 'av'} <= kinds or 'sdpa' in kinds
    cfg = load_quant_cfg(str(tmp_path / 'mixed_precision.py'))
    assert cfg['mixed_precision'] is None
    allocated = {re.sub(r'\\(.)', r'\1', o['name'])
                 for o in cfg['overrides'] if 'name' in o}
    assert {r['unit'] for r in rows['rows']} == allocated
    # candidates, or W6A6 for units the compared output does not see
    assert {o.get('a_bits') for o in cfg['overrides']} <= {4, 6, 8}
