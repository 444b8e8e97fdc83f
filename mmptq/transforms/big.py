"""Bimodal Integration of attention keys (PTQ4SAM)."""
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import torch
from mmengine.logging import print_log
from scipy.signal import find_peaks
from scipy.stats import gaussian_kde
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from mmptq.nn.attention import MATMULS
from mmptq.registry import MODEL_TRANSFORMS
from .base import BaseTransform, TransformContext
from .graph import REARRANGE, TensorTags, tensors_in

#: ops that scale by a number: a per-channel sign commutes with them
SCALAR_OPS = {'mul', '__mul__', '__rmul__', 'div', '__truediv__'}


def count_peaks(values: np.ndarray, grid: int = 128, height: float = 0.01,
                distance: int = 32) -> int:
    """PTQ4SAM's bimodality test (Lv et al., CVPR 2024, Bimodal Integration): the
    peaks of a Gaussian KDE (Scott's bandwidth) of ``values`` on ``grid``
    evenly spaced points over [min, max], with ``find_peaks`` at least
    ``height``·Σ density high and ``distance`` grid points apart; two
    peaks make the tensor bimodal. Constant values have one peak.

    Args:
        values: the samples (flattened).
        grid: points of the evaluation grid.
        height: minimum peak height, as a fraction of the grid's density
            sum.
        distance: minimum distance between peaks, in grid points.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    try:
        kde = gaussian_kde(values)
    except np.linalg.LinAlgError:  # (near) constant values
        return 1
    y = kde(np.linspace(values.min(), values.max(), grid))
    return len(find_peaks(y, height=height * y.sum(), distance=distance)[0])


@torch.no_grad()
def fold_sign(q: nn.Linear, k: nn.Linear, sign: Tensor) -> None:
    """Rows and biases of both projections times the sign γ_c ∈ {±1} of
    their output channel: (γ⊙q)·(γ⊙k)ᵀ = q·kᵀ (PTQ4SAM's sign operation)."""
    for lin in (q, k):
        lin.weight.mul_(sign[:, None].to(lin.weight))
        if lin.bias is not None:
            lin.bias.mul_(sign.to(lin.bias))


@dataclass
class _Trace:
    """Linear outputs met in matmuls (left name, right name) → their
    products in call order; Linears whose output is used otherwise."""
    products: Dict[Tuple[str, str], List[Tensor]] = field(
        default_factory=dict)
    others: Set[str] = field(default_factory=set)


class _QKMode(TorchFunctionMode):

    def __init__(self, tags: TensorTags, trace: _Trace) -> None:
        super().__init__()
        self.tags, self.trace = tags, trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = tensors_in((args, kwargs))
        tagged = [n for n in map(self.tags.get, inputs) if n]
        outs = tensors_in(out)
        name = getattr(func, '__name__', str(func))
        in_place = name == '__setitem__' or (name.endswith('_')
                                             and not name.startswith('__'))
        if not tagged or (not outs and not in_place):  # size(), shape...
            return out
        if func in MATMULS and len(tagged) == 2 and len(inputs) == 2 and \
                tagged[0] != tagged[1]:
            self.trace.products.setdefault(tuple(tagged), []).append(out)
        elif len(tagged) == 1 and not in_place and (
                name in REARRANGE or (name in SCALAR_OPS and
                                      len(inputs) == 1)):
            for t in outs:
                self.tags.add(t, tagged[0])
        else:
            self.trace.others.update(tagged)
        return out


def trace_qk(model: nn.Module, run: Callable[[], object]) -> _Trace:
    """Run ``run()`` once (no grad) with every ``nn.Linear`` output tagged;
    tags follow element-moving ops and scaling by a number. A matmul of
    two tagged tensors from different Linears is a product; any other use
    of a tagged tensor is an *other* use."""
    names = {m: n for n, m in model.named_modules()
             if isinstance(m, nn.Linear)}
    tags, trace = TensorTags(), _Trace()
    handles = [m.register_forward_hook(
        lambda mod, args, out: tags.add(out, names[mod])) for m in names]
    try:
        with torch.no_grad(), _QKMode(tags, trace):
            run()
    finally:
        for h in handles:
            h.remove()
    return trace


def _unchanged(model: nn.Module, run: Callable[[], object], first: _Trace,
               signs: Dict[Tuple[str, str], Tensor]) -> List[bool]:
    """Per pair of ``signs``: are its products the same when every pair's
    sign pattern is folded in at once?"""
    for (q, k), sign in signs.items():
        fold_sign(model.get_submodule(q), model.get_submodule(k), sign)
    again = trace_qk(model, run).products
    for (q, k), sign in signs.items():
        fold_sign(model.get_submodule(q), model.get_submodule(k), sign)
    return [
        len(again.get(pair, [])) == len(first.products[pair]) and all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
            for a, b in zip(again[pair], first.products[pair]))
        for pair in signs
    ]


def find_qk_pairs(model: nn.Module, run: Callable[[], object]
                  ) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str, str]]]:
    """(q, k) Linear pairs whose outputs meet only in Q·Kᵀ (left, right
    operand), each Linear in one pair, channel c of one against channel c
    of the other: checked by folding random sign patterns (all candidates
    at once, else one at a time) and running again, the products must not
    change. Returns the pairs and the rejected candidates as (q, k, why).
    """
    first = trace_qk(model, run)
    meets = Counter(name for pair in first.products for name in pair)
    gen = torch.Generator().manual_seed(0)
    signs, rejected = {}, []
    for q_name, k_name in first.products:
        q, k = model.get_submodule(q_name), model.get_submodule(k_name)
        if {q_name, k_name} & first.others:
            why = 'also used outside Q·Kᵀ'
        elif meets[q_name] > 1 or meets[k_name] > 1:
            why = 'meets more than one Linear'
        elif q.out_features != k.out_features:
            why = 'widths differ'
        else:
            signs[q_name, k_name] = torch.randint(
                0, 2, (k.out_features, ), generator=gen) * 2 - 1
            continue
        rejected.append((q_name, k_name, why))
    same = _unchanged(model, run, first, signs)
    if not all(same):
        same = [_unchanged(model, run, first, {pair: sign})[0]
                for pair, sign in signs.items()]
    rejected += [(q, k, 'channels do not meet one to one in the product')
                 for (q, k), ok in zip(signs, same) if not ok]
    return [pair for pair, ok in zip(signs, same) if ok], rejected


class _KeyStats:
    """Per-channel sums and a random subsample of rows (last dim =
    channels) of one key projection's outputs over all batches."""

    def __init__(self, max_values: int, seed: int) -> None:
        self.max_values = max_values
        self.gen = torch.Generator().manual_seed(seed)
        self.total: Optional[Tensor] = None
        self.rows: List[Tensor] = []

    def __call__(self, mod: nn.Module, args, out: Tensor) -> None:
        rows = out.detach().reshape(-1, out.shape[-1])
        total = rows.sum(dim=0, dtype=torch.float64).cpu()
        self.total = total if self.total is None else self.total + total
        self.rows.append(self.subsample(rows).double().cpu())

    def subsample(self, rows: Tensor) -> Tensor:
        """At most ``max_values`` values: random whole rows."""
        cap = max(1, self.max_values // rows.shape[1])
        if rows.shape[0] <= cap:
            return rows
        keep = torch.randperm(rows.shape[0], generator=self.gen)[:cap]
        return rows[keep.to(rows.device)]

    def sample(self) -> Tensor:
        return self.subsample(torch.cat(self.rows))


@MODEL_TRANSFORMS.register_module()
class BimodalIntegration(BaseTransform):
    """Bimodal Integration (BIG; Lv et al., PTQ4SAM, CVPR 2024). Where the
    keys K of an attention are bimodal per tensor (two KDE peaks:
    :func:`count_peaks`), each channel c gets the sign γ_c of its mean over
    the calibration data and γ is folded into the rows and biases of both
    the query and the key projection (:func:`fold_sign`): Q·Kᵀ is
    unchanged in FP and K = γ⊙K_old has its channels on one side, one
    mode, which a per-tensor quantizer fits.

    Which attentions: any whose Q and K come from two separate
    ``nn.Linear`` (e.g. segment-anything's ``transformer.Attention``,
    ``q_proj`` / ``k_proj``, in the mask decoder's TwoWayTransformer), found
    by tracing one FP forward (:func:`find_qk_pairs`), not by names: their
    outputs may only be reshaped, transposed or scaled by a number before
    meeting in one matmul, channel to channel (checked by folding a random
    sign pattern and running again). Fused projections (one ``qkv``
    Linear, ``nn.MultiheadAttention``'s packed weights, SAM's image
    encoder) are not handled: the reference applies BIG to the mask
    decoder only too.

    Detection and signs use all calibration batches: the key projection's
    outputs in the calibration pass (FP in ``calib.mode='parallel'``, the
    presets' mode), at most ``max_values`` of them for the KDE (random
    whole rows); the reference looks at batch element 0 of the first
    batch only. Folding happens after calibration, so every activation quantizer is
    calibrated again (and the two projections' weight quantizers). A
    channel with mean exactly 0 keeps its sign (the reference multiplies
    it by sign(0) = 0).

    The fold changes values only: a quantized checkpoint holds the folded
    weights and needs no :meth:`restore`.

    Args:
        grid: KDE grid points (reference: 128).
        height: minimum peak height, fraction of the density sum (0.01).
        distance: minimum peak distance in grid points (32).
        max_values: the most key values kept per projection for the KDE.
    """

    def __init__(self, grid: int = 128, height: float = 0.01,
                 distance: int = 32, max_values: int = 1 << 18) -> None:
        super().__init__()
        self.grid, self.height, self.distance = grid, height, distance
        self.max_values = max_values
        self.pairs: List[Tuple[str, str]] = []
        self.stats: Dict[str, _KeyStats] = {}
        self._handles: list = []

    def peaks(self, values: Tensor) -> int:
        """:func:`count_peaks` with this transform's settings."""
        return count_peaks(values.cpu().numpy(), self.grid, self.height,
                           self.distance)

    def _row(self, q: str, k: str, mode: str, reason: str = '',
             **extra) -> None:
        self.rows.append(dict(transform='BimodalIntegration', target=k,
                              consumers=[q], mode=mode, reason=reason,
                              **extra))

    def before_wrap(self, model: nn.Module, ctx: TransformContext) -> None:
        self.rows = []
        self.pairs, rejected = find_qk_pairs(model, ctx.run_batch)
        for q, k, reason in rejected:
            self._row(q, k, 'skipped', reason)

    def before_calibration(self, model: nn.Module,
                           ctx: TransformContext) -> None:
        self.stats = {k: _KeyStats(self.max_values, i)
                      for i, (_, k) in enumerate(self.pairs)}
        self._handles = [
            model.get_submodule(k).register_forward_hook(self.stats[k])
            for _, k in self.pairs]

    def after_calibration(self, model: nn.Module,
                          ctx: TransformContext) -> None:
        for h in self._handles:
            h.remove()
        folded = 0
        for q_name, k_name in self.pairs:
            stats = self.stats[k_name]
            if stats.total is None:
                self._row(q_name, k_name, 'skipped',
                          'not reached by the calibration data')
                continue
            rows = stats.sample()
            before = self.peaks(rows)
            if before != 2:
                self._row(q_name, k_name, 'kept', f'{before} peak(s)',
                          peaks=before)
                continue
            sign = torch.where(stats.total < 0, -1.0, 1.0)
            q, k = model.get_submodule(q_name), model.get_submodule(k_name)
            fold_sign(q, k, sign)
            for lin in (q, k):
                if hasattr(lin, 'calibrate_weight'):
                    lin.calibrate_weight()
            folded += 1
            self._row(q_name, k_name, 'folded', peaks=before,
                      peaks_after=self.peaks(rows * sign))
        self.stats = {}
        print_log(f'mmptq: BimodalIntegration folded the signs of '
                  f'{folded} of {len(self.pairs)} key projections',
                  logger='current')
        if folded:
            ctx.recalibrate([])
