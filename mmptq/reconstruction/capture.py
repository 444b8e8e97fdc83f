"""Recording what a unit receives and returns inside a full forward."""
import contextlib
from typing import Callable, Dict, Iterable, Iterator, List, Tuple

import torch
from torch import nn
from torch.utils._pytree import tree_map

from mmptq.quantizers import BaseQuantizer, PerCallQuantizer


class StopForward(Exception):
    """Raised by a capture hook once the unit has run: the rest of the
    model's forward is not needed."""


def detach_cpu(obj):
    """A nested structure with every tensor detached and copied to CPU."""
    return tree_map(
        lambda t: t.detach().to('cpu', copy=True)
        if isinstance(t, torch.Tensor) else t, obj)


@contextlib.contextmanager
def quantization_off(model: nn.Module) -> Iterator[None]:
    """Every quantizer of ``model`` passes its input through (the FP
    model); the flags are restored on exit."""
    qs = [m for m in model.modules() if isinstance(m, BaseQuantizer)]
    flags = [q.enabled for q in qs]
    for q in qs:
        q.enabled = False
    try:
        yield
    finally:
        for q, flag in zip(qs, flags):
            q.enabled = flag


def call_indices(unit: nn.Module) -> Dict[str, int]:
    """Current slot index of every per-call quantizer inside ``unit``."""
    return {name: m.index for name, m in unit.named_modules()
            if isinstance(m, PerCallQuantizer)}


def set_call_indices(unit: nn.Module, indices: Dict[str, int]) -> None:
    for name, index in indices.items():
        unit.get_submodule(name).index = index


def call_order(model: nn.Module, units: List[str], batch,
               run: Callable) -> Tuple[List[str], Dict[str, int]]:
    """Run one batch; return the units in the order of their first call
    and the number of calls of each per forward (units that did not run
    are left out)."""
    order: List[str] = []
    counts: Dict[str, int] = {}

    def hook(name):

        def pre(mod, args):
            if name not in counts:
                order.append(name)
            counts[name] = counts.get(name, 0) + 1

        return pre

    handles = [
        model.get_submodule(name).register_forward_pre_hook(hook(name))
        for name in units
    ]
    try:
        with torch.no_grad():
            run(batch)
    finally:
        for h in handles:
            h.remove()
    return order, counts


def capture(model: nn.Module, unit: nn.Module, calls: int,
            batches: Iterable, run: Callable,
            store: Callable[[int, dict], None]) -> int:
    """Feed ``batches`` and hand every call of ``unit`` to ``store(i,
    record)`` with record = dict(args, kwargs, output, index) (CPU copies;
    ``index`` = the per-call quantizer slots it used). The forward stops
    after the unit's ``calls``-th call. Returns the number of records."""
    state = dict(count=0, total=0, pending=None)

    def pre(mod, args, kwargs):
        state['pending'] = dict(
            args=detach_cpu(args), kwargs=detach_cpu(kwargs),
            index=call_indices(mod))

    def post(mod, args, kwargs, output):
        record = state['pending']
        record['output'] = detach_cpu(output)
        store(state['total'], record)
        state['total'] += 1
        state['count'] += 1
        if state['count'] >= calls:
            raise StopForward

    handles = [
        unit.register_forward_pre_hook(pre, with_kwargs=True),
        unit.register_forward_hook(post, with_kwargs=True)
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                state['count'] = 0
                try:
                    run(batch)
                except StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    return state['total']
