"""Reconstruction samples of one unit and minibatches drawn from them.

A sample is one recorded call of the unit: ``args`` (its quantized-model
input, ``(args, kwargs)``), ``fp`` (the FP-model input of the same call,
or None when the two calls do not correspond, see ``build_samples``),
``target`` (the FP output), ``index`` (per-call quantizer slots) and
``extra`` (per-image tensors some losses need, or None).

Samples whose tensors all share their first dimension (images, tokens
rows of a batch, RoIs) are *sliceable*: samples with the same structure
and trailing shapes form a group, and a minibatch is ``batch_size`` rows
drawn uniformly from one group (QDrop's random minibatches of the
calibration set). Other samples are drawn whole.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from .cache import RecordCache


def _body(sample: dict) -> Any:
    return (sample['args'], sample['fp'], sample['target'], sample['extra'])


def signature(sample: dict) -> Tuple[Any, Optional[int]]:
    """(grouping key, rows) of a sample; rows is None if not sliceable."""
    leaves, spec = tree_flatten(_body(sample))
    parts, rows = [], set()
    for leaf in leaves:
        if isinstance(leaf, Tensor):
            rows.add(leaf.shape[0] if leaf.dim() else None)
            parts.append((tuple(leaf.shape[1:]), leaf.dtype))
        else:
            parts.append(repr(leaf))
    n = rows.pop() if len(rows) == 1 else None
    return (str(spec), tuple(parts), tuple(sorted(sample['index'].items()))), n


class SampleSet:
    """Samples of one unit in a ``RecordCache``, grouped: those under
    ``keys`` (default ``0..count-1``)."""

    def __init__(self, cache: RecordCache, count: int,
                 keys: Optional[Sequence[int]] = None) -> None:
        self.cache = cache
        self.keys = list(range(count) if keys is None else keys)
        self.count = len(self.keys)
        groups: Dict[Any, List[Tuple[int, int]]] = {}
        self.atomic: List[int] = []
        for i in self.keys:
            key, rows = signature(cache.get(i))
            if rows is None:
                self.atomic.append(i)
            elif rows > 0:
                groups.setdefault(key, []).append((i, rows))
        self.groups = list(groups.values())
        weights = [float(sum(r for _, r in g)) for g in self.groups]
        weights += [1.0] * len(self.atomic)
        self.weights = torch.tensor(weights or [0.0])
        self.rows = int(sum(weights))

    def __len__(self) -> int:
        return self.rows

    def draw(self, batch_size: int, gen: torch.Generator) -> dict:
        """A minibatch: ``batch_size`` rows of one group (all of them if it
        has fewer), or one whole non-sliceable sample."""
        pick = int(torch.multinomial(self.weights, 1, generator=gen))
        if pick >= len(self.groups):
            return self.cache.get(self.atomic[pick - len(self.groups)])
        group = self.groups[pick]
        total = sum(r for _, r in group)
        take = torch.randperm(total, generator=gen)[:batch_size].sort().values
        starts = torch.tensor([0] + [r for _, r in group]).cumsum(0)
        parts = []
        for j, (key, rows) in enumerate(group):
            sel = take[(take >= starts[j]) & (take < starts[j + 1])]
            if len(sel):
                parts.append((self.cache.get(key), sel - starts[j]))
        return gather(parts)


def gather(parts: List[Tuple[dict, Tensor]]) -> dict:
    """Concatenate the selected rows of samples with the same structure."""
    flat = [tree_flatten(_body(s))[0] for s, _ in parts]
    spec = tree_flatten(_body(parts[0][0]))[1]
    out = []
    for k, first in enumerate(flat[0]):
        if isinstance(first, Tensor):
            out.append(torch.cat([f[k][rows] for f, (_, rows) in
                                  zip(flat, parts)]))
        else:
            out.append(first)
    args, fp, target, extra = tree_unflatten(out, spec)
    return dict(args=args, fp=fp, target=target, extra=extra,
                index=parts[0][0]['index'])
