"""Mixed precision under a budget: per-op bits that minimise the summed
sensitivity with the cost (BOPs, model size or average weight bits) at
most the budget.

The choice is a multiple-choice knapsack: one option per unit (a layer's
(w_bits, a_bits), an attention host's bits), value v = Σ sensitivity of
its ops at those bits (noises of independent ops add), cost c; solved
exactly as the integer program of HAWQ-V3 (Sec. 3.4; MQBench's
``mixed_precision``)

    min Σ_u Σ_j v_uj x_uj  s.t.  Σ_u Σ_j c_uj x_uj ≤ B,  Σ_j x_uj = 1,
    x_uj ∈ {0, 1}

with ``scipy.optimize.milp``, or greedily (best value gained per cost
added) where scipy is missing or the solver fails. BOPs of a layer are
MACs · b_w · b_a (HAWQ-V3, MixA-Q); of an attention matmul MACs · b²."""
import itertools
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mmptq.quantizers import check_bits

METRICS = ('bops', 'size', 'avg_bits')
OBJECTIVES = ('noise', 'loss', 'hessian')
SOLVERS = ('milp', 'greedy')
#: ``quant_cfg.mixed_precision`` defaults; ``budget`` is required: a number
#: in the metric's unit (GBOPs per image, MiB, bits) or a uniform setting
#: 'W5A5' (the cost of the same quant_cfg at those bits); ``objective``:
#: the summed sensitivity is of the output noise ratio ('noise') or of the
#: task-loss increase ('loss', clipped at 0; noisier on a few images) or,
#: for weights, of HAWQ-V2's Ω/2 = Tr(H)/n·‖Q(W) − W‖²/2 (Hutchinson, with
#: ``hutchinson`` Rademacher vectors per batch; 'hessian': activations
#: keep their measured loss increase);
#: ``measure``: 'lowest' (calibrate once, at the lowest candidate, and
#: extrapolate the others: :func:`extrapolate`) or 'each' (calibrate and
#: measure at every candidate); ``w_candidates`` / ``a_candidates``: the
#: weights' / activations' own bit widths (None: ``candidates``), e.g. a
#: floor of 4 bits on activations while weights may go to 3
MIXED_PRECISION_DEFAULTS: Dict = dict(
    budget=None, candidates=(4, 6, 8), w_candidates=None, a_candidates=None,
    metric='bops', objective='noise', solver='milp', eval_batches=2,
    measure='lowest', hutchinson=8)
MEASURES = ('lowest', 'each')
_UNIFORM = re.compile(r'[wW](\d+)[aA](\d+)')


def parse_uniform(budget) -> Optional[Tuple[int, int]]:
    """(w_bits, a_bits) of a budget 'W5A5', None for a number."""
    if isinstance(budget, str):
        m = _UNIFORM.fullmatch(budget)
        return (int(m[1]), int(m[2])) if m else None
    return None


def check_mixed_precision(value) -> Optional[dict]:
    """``quant_cfg.mixed_precision`` validated, with its defaults (None
    stays None: uniform precision)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f'quant_cfg.mixed_precision must be a dict, e.g. '
                         f"dict(budget='W5A5', candidates=(4, 6, 8)); got "
                         f'{value!r}')
    for key in value:
        if key not in MIXED_PRECISION_DEFAULTS:
            raise ValueError(f'unknown key quant_cfg.mixed_precision.{key}; '
                             f'valid keys: {list(MIXED_PRECISION_DEFAULTS)}')
    cfg = {**MIXED_PRECISION_DEFAULTS, **value}
    budget = cfg['budget']
    if parse_uniform(budget) is None and (
            isinstance(budget, bool) or not isinstance(budget, (int, float))
            or budget <= 0):
        raise ValueError(f'quant_cfg.mixed_precision.budget={budget!r}: give '
                         f"a positive number or a uniform setting 'W5A5'")
    for b in parse_uniform(budget) or ():
        check_bits(b, 'quant_cfg.mixed_precision.budget')
    cands = cfg['candidates']
    if not isinstance(cands, (list, tuple)) or not cands:
        raise ValueError(f'quant_cfg.mixed_precision.candidates={cands!r}: '
                         f'give bit widths, e.g. (4, 6, 8)')
    for key in ('w_candidates', 'a_candidates'):
        if cfg[key] is None:
            cfg[key] = cands
        elif not isinstance(cfg[key], (list, tuple)) or not cfg[key]:
            raise ValueError(f'quant_cfg.mixed_precision.{key}={cfg[key]!r}'
                             f': give bit widths, e.g. (4, 6, 8), or None')
    for key in ('candidates', 'w_candidates', 'a_candidates'):
        cfg[key] = tuple(sorted(
            {check_bits(b, f'quant_cfg.mixed_precision.{key}')
             for b in cfg[key]}))
    # the bit widths measured / extrapolated: both lists
    cfg['candidates'] = tuple(sorted({*cfg['w_candidates'],
                                      *cfg['a_candidates']}))
    for key, allowed in (('metric', METRICS), ('objective', OBJECTIVES),
                         ('solver', SOLVERS), ('measure', MEASURES)):
        if cfg[key] not in allowed:
            raise ValueError(f'quant_cfg.mixed_precision.{key}={cfg[key]!r} '
                             f'is not one of {allowed}')
    for key in ('eval_batches', 'hutchinson'):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) \
                or cfg[key] < 1:
            raise ValueError(f'quant_cfg.mixed_precision.{key}='
                             f'{cfg[key]!r}: give a positive integer')
    return cfg


@dataclass
class Unit:
    """One decision: the override ``name`` (a layer, or an attention host)
    takes one of ``options`` (w_bits, a_bits; None: not set by the
    allocation), each with its summed sensitivity ``values`` and ``costs``.
    ``ops``: the op rows the unit holds."""
    name: str
    options: List[Tuple[Optional[int], Optional[int]]]
    values: List[float]
    costs: List[float]
    ops: List[dict]


def op_cost(ops: Sequence[dict], w_bits: Optional[int],
            a_bits: Optional[int], metric: str) -> float:
    """Cost of a unit's ops (rows with kind, macs, params) at (w, a) bits:
    bops MACs·b_w·b_a / 1e9 of a layer (its weight op's MACs), Σ MACs·b_a²
    / 1e9 of a unit without weights (attention matmuls); size Σ params·b_w
    / 8 / 2²⁰ MiB; avg_bits Σ params·b_w (the caller divides by the
    params)."""
    has_w = any(op['kind'] == 'weight' for op in ops)
    if metric == 'bops':
        macs = sum(op['macs'] for op in ops
                   if op['kind'] == ('weight' if has_w else 'act'))
        return macs * (w_bits if has_w else a_bits) * a_bits / 1e9
    params = sum(op['params'] for op in ops)
    return params * (w_bits or 0) / (8 * 2**20 if metric == 'size' else 1)


def build_units(ops: Sequence[dict], candidates: Sequence[int], metric: str,
                objective: str,
                a_candidates: Optional[Sequence[int]] = None) -> List[Unit]:
    """The decisions over the op rows of the sensitivity table (dict(name,
    kind, unit, macs, params, sensitivity={bits: dict(noise,
    loss_increase)}), forward order). bops: a layer chooses (b_w, b_a) ∈
    candidates × a_candidates (None: ``candidates``), an attention host or
    a norm b_a ∈ a_candidates; size / avg_bits: a layer chooses b_w ∈
    candidates (activations keep the quant_cfg's bits)."""
    a_candidates = candidates if a_candidates is None else a_candidates
    groups: Dict[str, List[dict]] = {}
    for op in ops:
        groups.setdefault(op['unit'], []).append(op)
    units = []
    for name, members in groups.items():
        has_w = any(op['kind'] == 'weight' for op in members)
        if metric == 'bops':
            options = list(itertools.product(candidates, a_candidates)) \
                if has_w else [(None, b) for b in a_candidates]
        elif has_w:
            options = [(b, None) for b in candidates]
        else:
            continue
        values, costs = [], []
        for w, a in options:
            values.append(sum(
                _value(op, w if op['kind'] == 'weight' else a, objective)
                for op in members
                if (w if op['kind'] == 'weight' else a) is not None))
            costs.append(op_cost(members, w, a, metric))
        units.append(Unit(name, options, values, costs, members))
    return units


def extrapolate(ops: Sequence[dict], candidates: Sequence[int]) -> None:
    """Fill in place the sensitivity of the op rows at the ``candidates``
    not measured, from the lowest measured bit width b0: the noise power of
    a uniform quantizer scales with its step², i.e. by 4^(b0 − b) (−6.02 dB
    per bit), and so does the loss increase, second order in the
    perturbation (HAWQ: Ω = Tr(H)·‖ΔW‖²), and HAWQ-V2's Ω itself."""
    for op in ops:
        sens = op['sensitivity']
        b0 = min(sens)
        for b in candidates:
            if b in sens:
                continue
            f = 4.0**(b0 - b)
            loss, hessian = (sens[b0].get(k) for k in ('loss_increase',
                                                       'hessian'))
            sens[b] = dict(noise=sens[b0]['noise'] * f,
                           sqnr=sens[b0]['sqnr'] + 6.0206 * (b - b0),
                           loss_increase=None if loss is None else loss * f,
                           hessian=None if hessian is None else hessian * f)


def _value(op: dict, bits: int, objective: str) -> float:
    s = op['sensitivity'][bits]
    if objective == 'hessian' and s.get('hessian') is not None:
        return s['hessian'] / 2  # ΔL ≈ ½ ΔWᵀHΔW (HAWQ-V2's Ω / 2)
    if objective in ('loss', 'hessian'):
        return max(s['loss_increase'], 0.0)
    return s['noise']


def rule_bits(unit: Unit, for_layer: Callable[..., dict],
              attn_bits: Optional[int]) -> Tuple[int, int]:
    """(w_bits, a_bits) that a quant_cfg's per-layer rules
    (``LayerRules.for_layer``) give ``unit``: its layer's, or an attention
    host's op (``attn_bits``: the quant_cfg's ``attn.bits`` where set)."""
    op = unit.ops[0]
    names = (op['name'], unit.name) if op['name'] != unit.name else \
        (unit.name, )
    rule = for_layer(*names)
    a_bits = rule['a_bits']
    if op['name'] != unit.name and attn_bits:
        a_bits = attn_bits
    return rule['w_bits'], a_bits


def rules_cost(units: Sequence[Unit], for_layer: Callable[..., dict],
               attn_bits: Optional[int], metric: str) -> float:
    """Σ cost of ``units`` at the bits a quant_cfg's per-layer rules give
    them (``LayerRules.for_layer``; ``attn_bits``: its ``attn.bits``)."""
    return sum(op_cost(u.ops, *rule_bits(u, for_layer, attn_bits), metric)
               for u in units)


def budget_cost(units: Sequence[Unit], budget, metric: str,
                for_layer: Optional[Callable[..., dict]] = None,
                attn_bits: Optional[int] = None) -> float:
    """``budget`` in the solver's unit (Σ unit costs): a number in the
    metric's unit (avg_bits: times the params), or 'W5A5': the cost of
    every unit at the bits ``for_layer`` gives (``LayerRules.for_layer`` of
    the quant_cfg with w_bits / a_bits set to 5, its overrides kept)."""
    if parse_uniform(budget) is None:
        return budget * total_params(units) if metric == 'avg_bits' \
            else float(budget)
    return rules_cost(units, for_layer, attn_bits, metric)


def total_params(units: Sequence[Unit]) -> int:
    return sum(op['params'] for u in units for op in u.ops)


def solve_milp(units: Sequence[Unit], budget: float) -> Optional[List[int]]:
    """The optimal option per unit (HAWQ-V3's ILP), None when scipy's
    ``milp`` is missing or finds no solution."""
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix
    except ImportError:
        return None
    sizes = [len(u.options) for u in units]
    n = sum(sizes)
    c = np.concatenate([u.values for u in units]).astype(float)
    a = lil_matrix((len(units) + 1, n))
    start = 0
    for i, k in enumerate(sizes):
        a[i, start:start + k] = 1.0
        start += k
    a[len(units), :] = np.concatenate([u.costs for u in units])
    lo = np.r_[np.ones(len(units)), -np.inf]
    hi = np.r_[np.ones(len(units)), budget]
    res = milp(c, constraints=LinearConstraint(a.tocsr(), lo, hi),
               integrality=np.ones(n), bounds=Bounds(0, 1),
               options=dict(mip_rel_gap=0.0))
    if res.x is None:
        return None
    choice, start = [], 0
    for k in sizes:
        choice.append(int(np.argmax(res.x[start:start + k])))
        start += k
    return choice


def solve_greedy(units: Sequence[Unit], budget: float) -> List[int]:
    """Start every unit at its cheapest option, then repeatedly take the
    upgrade with the largest value decrease per cost added that still fits
    the budget, until none helps."""
    choice = [min(range(len(u.options)), key=lambda j: (u.costs[j],
                                                        u.values[j]))
              for u in units]
    spent = sum(u.costs[j] for u, j in zip(units, choice))
    if spent > budget * (1 + 1e-12):
        raise ValueError(f'mixed precision: the budget {budget:.6g} is '
                         f'below the cheapest allocation ({spent:.6g})')
    while True:
        best, best_gain = None, 0.0
        for i, u in enumerate(units):
            cur = choice[i]
            for j in range(len(u.options)):
                gain = u.values[cur] - u.values[j]
                extra = u.costs[j] - u.costs[cur]
                if gain <= 0 or spent + extra > budget * (1 + 1e-12):
                    continue
                rate = gain / extra if extra > 0 else float('inf')
                if best is None or rate > best_gain:
                    best, best_gain = (i, j, extra), rate
        if best is None:
            return choice
        i, j, extra = best
        choice[i] = j
        spent += extra


def allocate(units: Sequence[Unit], budget: float,
             solver: str = 'milp') -> Tuple[List[int], str]:
    """(option per unit, solver used): the ILP, else the greedy one."""
    if solver == 'milp':
        choice = solve_milp(units, budget)
        if choice is not None:
            return choice, 'milp'
    return solve_greedy(units, budget), 'greedy'


def to_overrides(units: Sequence[Unit], choice: Sequence[int]) -> List[dict]:
    """One ``overrides`` entry per unit: name (the exact layer or host
    name as a regex) and the chosen w_bits / a_bits."""
    out = []
    for u, j in zip(units, choice):
        w, a = u.options[j]
        ov = dict(name=re.escape(u.name))
        if w is not None:
            ov['w_bits'] = w
        if a is not None:
            ov['a_bits'] = a
        out.append(ov)
    return out
