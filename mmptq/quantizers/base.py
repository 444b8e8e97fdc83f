"""Fake quantizers: modules that map x to its de-quantized value x̂.

Every quantizer owns an observer while it is calibrated. The observer sees the
input as rows (C, N): one row per quantization group (one row for per-tensor,
one per channel, one per (channel, group) for per-group), and returns a clip
range (lo, hi) per row. The quantizer turns a range into its parameters
(``qparams_from_range``) and applies ``fake_quant`` with them.
"""
import contextlib
from contextvars import ContextVar
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from mmptq.registry import OBSERVERS, build_checked

GRANULARITIES = ('tensor', 'channel', 'group')

#: the quant_cfg key of the quantizers being built (``'act'``,
#: ``'weight'``, ``'norm'``, ``'attn.softmax'``...), set around their build
#: by ``core.quantize``: an error about a quantizer's observer names
#: ``quant_cfg.<key>.observer``
_CONFIG_KEY: ContextVar[str] = ContextVar('mmptq_quantizer_config_key',
                                          default='')


@contextlib.contextmanager
def config_key(key: str) -> Iterator[None]:
    """Quantizers built in this context come from ``quant_cfg.<key>``."""
    token = _CONFIG_KEY.set(key)
    try:
        yield
    finally:
        _CONFIG_KEY.reset(token)


def observer_key() -> str:
    """The quant_cfg key of the observer of a quantizer being built."""
    key = _CONFIG_KEY.get()
    return f'{key}.observer' if key else 'observer'
MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: int, name: str = '') -> int:
    """Validate a bit-width: an integer in [2, 16]."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not (
            MIN_BITS <= bits <= MAX_BITS):
        where = f' for {name}' if name else ''
        raise ValueError(f'bits={bits!r}{where} is out of range: mmptq '
                         f'quantizes to {MIN_BITS}..{MAX_BITS} bits; use '
                         f'skip=True in an override to keep a layer in FP')
    return bits


def round_ste(x: Tensor) -> Tensor:
    """round(x) in the forward pass, identity gradient (straight-through)."""
    if not x.requires_grad:
        return x.round()
    # round(±inf) − ±inf is NaN: count it as 0 so that round_ste(±inf) = ±inf
    return (x.round() - x).detach().nan_to_num(0.0) + x


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """x in the forward pass, gradient multiplied by ``scale`` (LSQ, Eq. 4)."""
    return (x - x * scale).detach() + x * scale


class BaseQuantizer(nn.Module):
    """Common state of a fake quantizer.

    Args:
        bits: bit-width b in [2, 16].
        granularity: 'tensor', 'channel' (one range per index of ``ch_axis``)
            or 'group' (per ``ch_axis`` index, groups of ``group_size``
            consecutive elements of the flattened remaining dims; weights).
        ch_axis: channel axis for 'channel' and 'group'.
        group_size: elements per group for 'group'.
        observer: observer config (a registry dict).
        name: layer name used in messages.

    Modes: ``observing`` (feed the observer, refresh the parameters from it
    on every call: calibration) and ``enabled`` (apply fake quantization).
    Calibration with both on is *sequential*: later layers see an input that
    is already quantized with the running parameters. While observing with
    fake quantization off the parameters are unused, so they are refreshed
    once, when observing is switched off (``update_qparams`` is deferred).
    """

    #: ``with BaseQuantizer.config_key('act'):`` see :func:`config_key`
    config_key = staticmethod(config_key)

    def __init__(self,
                 bits: int = 8,
                 granularity: str = 'tensor',
                 ch_axis: int = 0,
                 group_size: Optional[int] = None,
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        super().__init__()
        self.name = name
        self.bits = check_bits(bits, name)
        if granularity not in GRANULARITIES:
            raise ValueError(f'granularity={granularity!r} for {name or "a quantizer"} '
                             f'is not one of {GRANULARITIES}')
        if granularity == 'group' and (not isinstance(group_size, int)
                                       or group_size < 1):
            raise ValueError(f'granularity="group" for {name or "a quantizer"} needs '
                             f'a positive integer group_size, got {group_size!r}')
        self.granularity = granularity
        self.ch_axis = ch_axis
        self.group_size = group_size
        observer = observer or dict(type='MinMaxObserver')
        self.observer = build_checked(OBSERVERS, observer, observer_key())
        self.observer_type = type(self.observer).__name__
        self.observing = False
        self.enabled = True
        self.register_buffer('scale', torch.empty(0))
        self.register_buffer('zero_point', torch.empty(0))

    @property
    def observing(self) -> bool:
        return self.__dict__.get('_observing', False)

    @observing.setter
    def observing(self, value: bool) -> None:
        ended = self.observing and not value
        self.__dict__['_observing'] = value
        if ended and self.__dict__.pop('_stale', False):
            self.update_qparams()

    # -- shapes ------------------------------------------------------------
    def to_rows(self, x: Tensor) -> Tensor:
        """View ``x`` as (C, N): one row per set of quantization params."""
        if self.granularity == 'tensor':
            return x.reshape(1, -1)
        if self.granularity == 'channel':
            return x.movedim(self.ch_axis, 0).reshape(x.shape[self.ch_axis], -1)
        return self._grouped(x).reshape(-1, self.group_size)

    def _grouped(self, x: Tensor) -> Tensor:
        lead = x.movedim(self.ch_axis, 0)
        flat = lead.reshape(lead.shape[0], -1)
        if flat.shape[1] % self.group_size:
            raise ValueError(
                f'{self.name}: group_size={self.group_size} does not divide the '
                f'{flat.shape[1]} elements per channel of a {tuple(x.shape)} '
                f'tensor; pick a divisor or granularity="channel"')
        return flat.reshape(flat.shape[0], -1, self.group_size)

    def broadcast(self, param: Tensor, x: Tensor) -> Tensor:
        """Per-row ``param`` (one value per row of ``to_rows``) shaped to
        broadcast against ``x`` (expanded to x's shape for 'group')."""
        if self.granularity == 'tensor':
            return param.reshape(())
        if self.granularity == 'channel':
            shape = [1] * x.dim()
            shape[self.ch_axis] = -1
            return param.reshape(shape)
        grouped = self._grouped(x)
        full = param.reshape(grouped.shape[0], -1, 1).expand_as(grouped)
        lead = x.movedim(self.ch_axis, 0)
        return full.reshape(lead.shape).movedim(0, self.ch_axis)

    def quantize_with(self, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        """fake_quant on ``x`` with per-row params broadcast to its shape."""
        return self.fake_quant(x, self.broadcast(scale, x),
                               self.broadcast(zero_point, x))

    # -- the math, per quantizer ------------------------------------------
    def qparams_from_range(self, lo: Tensor,
                           hi: Tensor) -> Tuple[Tensor, Tensor]:
        """(scale, zero_point) per row for the clip range [lo, hi]."""
        raise NotImplementedError

    def fake_quant(self, x: Tensor, scale: Tensor,
                   zero_point: Tensor) -> Tensor:
        """x̂ for broadcastable params."""
        raise NotImplementedError

    def fake_quant_range(self, rows: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """x̂ of rows (C, N) quantized with the clip range (lo, hi) per row:
        what search observers score candidates with."""
        scale, zero_point = self.qparams_from_range(lo, hi)
        return self.fake_quant(rows, scale[:, None], zero_point[:, None])

    # -- state -------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        return self.scale.numel() > 0

    def set_qparams(self, scale: Tensor, zero_point: Tensor) -> None:
        """Store the parameters as buffers (a learnt step stops learning)."""
        for key, value in (('scale', scale), ('zero_point', zero_point)):
            self._parameters.pop(key, None)
            # registered in __init__ (persistent): set without its checks
            self._buffers[key] = value.detach().clone()

    def learn_scale(self) -> nn.Parameter:
        """Make the step s a trainable ``nn.Parameter`` (LSQ, reconstruction)
        and return it; ``freeze`` or ``set_qparams`` turns it back into a
        buffer."""
        if not self.calibrated:
            raise RuntimeError(f'{self.name or "quantizer"}: calibrate before '
                               f'learning the step size')
        if not isinstance(self.scale, nn.Parameter):
            value = self._buffers.pop('scale')
            self.scale = nn.Parameter(value.clone())
        return self.scale

    def update_qparams(self) -> None:
        """``refresh_qparams``, deferred to the end of observation while
        fake quantization is off (the parameters are unused until then)."""
        if self.observing and not self.enabled:
            self.__dict__['_stale'] = True
            return
        self.refresh_qparams()

    def refresh_qparams(self) -> None:
        """Recompute the parameters from the observer's state (quantizers
        with their own parameters override this)."""
        self.set_qparams(*self.qparams_from_range(*self.observer.range()))

    def freeze(self) -> None:
        """End calibration: drop the observer, keep the parameters. A
        quantizer that saw no data (its layer was not reached by any
        calibration batch) is disabled: the op stays FP."""
        self.enabled = self.calibrated
        self.observing = False
        self.observer = None
        self.set_qparams(self.scale, self.zero_point)

    #: buffers whose shapes are known only after calibration: loading a
    #: checkpoint gives them its shapes first (subclasses add theirs)
    CALIBRATED_SHAPES: Tuple[str, ...] = ('scale', 'zero_point')

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in self.CALIBRATED_SHAPES:
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        # a frozen checkpoint (parameters, no observer state) loads frozen
        if (self.observer is not None and prefix + 'scale' in state_dict
                and prefix + 'observer.num_batches' not in state_dict):
            self.observing = False
            self.observer = None
        if self.observer is None and prefix + 'scale' in state_dict:
            # frozen without data (see ``freeze``): stays FP
            self.enabled = state_dict[prefix + 'scale'].numel() > 0
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward_searched(self, x: Tensor, rows: Tensor) -> Tensor:
        """The forward of a quantizer that searches its parameters itself
        (AGQ, DRQ): its observer takes ``rows`` (this batch's search
        result), the parameters follow, and ``x`` is quantized with them
        (the observer is not fed ``x`` itself)."""
        self.observer.update(rows, self)
        self.update_qparams()
        self.observing = False
        try:
            return BaseQuantizer.forward(self, x)
        finally:
            self.observing = True

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observer.update(self.to_rows(x.detach()), self)
            self.update_qparams()
        if not self.enabled:
            return x
        if not self.calibrated:
            raise RuntimeError(
                f'{self.name or "quantizer"} is used before calibration: run '
                f'mmptq.apis.quantize_model or load a quantized checkpoint')
        return self.quantize_with(x, self.scale, self.zero_point).to(x.dtype)

    def extra_repr(self) -> str:
        s = f'bits={self.bits}, granularity={self.granularity}'
        if self.granularity != 'tensor':
            s += f', ch_axis={self.ch_axis}'
        if self.granularity == 'group':
            s += f', group_size={self.group_size}'
        return s

    def describe(self) -> dict:
        """Summary row of this quantizer."""
        return dict(
            quantizer=type(self).__name__,
            bits=self.bits,
            granularity=self.granularity,
            observer=self.observer_type)


def log_levels(bits: int, root: int) -> Tensor:
    """The 2^b levels 2^(-q/root), q = 0..2^b-1, computed in float64."""
    q = torch.arange(2**bits, dtype=torch.float64)
    return torch.pow(2.0, -q / root)


