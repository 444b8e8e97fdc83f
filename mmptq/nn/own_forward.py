"""Quantized Conv / Linear subclasses that keep their own forward.

A subclass that overrides ``forward`` (TF "same" padding as mmcv's
``Conv2dAdaptivePadding``, a reshape, a mask) but still ends in the
parent's functional op with its own ``self.weight`` (``F.conv2d(x',
self.weight, ...)``) is quantized as that op: its forward runs unchanged
under a ``TorchFunctionMode`` that replaces, in that one call, the input by
Q_a(input) and the weight by Q_w(W). Whether a module does so is recorded
in the discovery forward (``record_calls`` with ``weighted``): the calls of
the parent's functional ops it made while it was the innermost running
module, each with whether its weight was ``self.weight``.

The quantized module is an instance of a class made once per float class,
``QuantOwnForward<Name>(QuantOwnForwardMixin, <float class>)``: it keeps
the float class's forward, methods and attributes (``super().forward``
works) and is a ``QuantWeightMixin`` for calibration and reconstruction.
"""
from typing import Callable, Dict, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .modules import QuantWeightMixin, _maybe

#: functional weighted ops → their name (recorded in the discovery forward)
WEIGHTED_FUNCS: Dict[Callable, str] = {
    F.linear: 'linear',
    F.conv1d: 'conv1d',
    F.conv2d: 'conv2d',
    F.conv3d: 'conv3d',
    F.conv_transpose1d: 'conv_transpose1d',
    F.conv_transpose2d: 'conv_transpose2d',
    F.conv_transpose3d: 'conv_transpose3d',
}


def call_operands(args, kwargs) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(input, weight) of a call of a functional weighted op."""
    x = args[0] if args else kwargs.get('input')
    w = args[1] if len(args) > 1 else kwargs.get('weight')
    return x, w


class _OwnOpMode(TorchFunctionMode):
    """While a ``QuantOwnForwardMixin`` module's forward runs: its call of
    ``functional`` with its own weight gets Q_a(input) and Q_w(W)."""

    def __init__(self, op: 'QuantOwnForwardMixin') -> None:
        super().__init__()
        self.op = op
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        op = self.op
        if func is not op.functional or \
                call_operands(args, kwargs)[1] is not op.weight:
            return func(*args, **kwargs)
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError(
                f'{type(op).__name__}: its forward calls {op.kind} with its '
                f'own weight more than once, but the discovery forward saw '
                f'one call; keep it in FP with an override skip=True')
        args = list(args)
        x = args[0] if args else kwargs['input']
        qx = _maybe(op.input_quantizer, x)
        if args:
            args[0] = qx
        else:
            kwargs['input'] = qx
        if len(args) > 1:
            args[1] = op.quant_weight()
        else:
            kwargs['weight'] = op.quant_weight()
        return func(*args, **kwargs)


class QuantOwnForwardMixin(QuantWeightMixin):
    """y = forward_float(x) with its call functional(x', W, ...) replaced by
    functional(Q_a(x'), Q_w(W), ...). Class attributes set by
    ``own_forward_class``: ``float_class``, ``quant_class`` (the quantized
    class of the parent: kind, weight axis), ``functional``."""

    float_class: type
    quant_class: type
    own_forward = True

    @classmethod
    def from_float(cls, mod: nn.Module) -> nn.Module:
        """A copy of ``mod`` (same Parameters, buffers, submodules and
        attributes; its own containers) of the quantized class."""
        new = cls.__new__(cls)
        state = dict(mod.__dict__)
        for key, value in state.items():  # nn.Module's dicts / sets
            if key.startswith('_') and isinstance(value, (dict, set)):
                state[key] = type(value)(value)
        new.__dict__.update(state)
        return new

    def forward(self, *args, **kwargs):
        with _OwnOpMode(self):
            return self.float_class.forward(self, *args, **kwargs)

    def __reduce_ex__(self, protocol):  # picklable: the class is rebuilt
        return (_new_instance, (self.float_class, self.quant_class),
                self.__dict__)


_CLASSES: Dict[Tuple[type, type], type] = {}


def own_forward_class(float_class: type, quant_class: type) -> type:
    """The quantized class of ``float_class`` (a subclass of the parent
    that ``quant_class`` quantizes, e.g. ``QuantConv2d``), made once."""
    key = (float_class, quant_class)
    if key not in _CLASSES:
        _CLASSES[key] = type(
            f'QuantOwnForward{float_class.__name__}',
            (QuantOwnForwardMixin, float_class),
            dict(float_class=float_class, quant_class=quant_class,
                 functional=staticmethod(quant_class.functional),
                 kind=quant_class.kind,
                 weight_ch_axis=quant_class.weight_ch_axis,
                 __module__=__name__))
    return _CLASSES[key]


def _new_instance(float_class: type, quant_class: type) -> nn.Module:
    cls = own_forward_class(float_class, quant_class)
    return cls.__new__(cls)


def own_weight_calls(calls, functional: Callable) -> Tuple[int, int]:
    """(calls of ``functional`` with the module's own weight, with another
    weight) among a module's recorded ``calls``."""
    name = WEIGHTED_FUNCS[functional]
    own = sum(c.kind == name and c.weight == 'own' for c in calls)
    other = sum(c.kind == name and c.weight == 'other' for c in calls)
    return own, other
