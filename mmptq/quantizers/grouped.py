"""Channels in groups that share one asymmetric uniform quantizer: the
common state of RORQ (PTQ4RIS) and CAG (AHCPTQ).

The input's channels (its last axis: a Linear's input, channels last) are
split into G groups, G between 1 (per tensor) and C (per channel). Group g
has the step s_g and zero point z_g of its range [lo_g, hi_g]:

    s_g = (hi_g − lo_g)/(2^b − 1),   z_g = −round(lo_g/s_g),
    x̂_c = (clamp(round(x_c/s_g) + z_g, 0, 2^b − 1) − z_g)·s_g,  g = g(c).

In hardware the channels sorted by group (``perm``) make every group a
contiguous slice of the input: one per-tensor quantized GEMM per slice (or
one GEMM with a per-slice input scale), the partial sums added; the order
folds into the weights offline (``rorq.fold_reorder``). A subclass says how
channels are grouped (``channel_groups``) and which range a group gets
(``group_range``).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .uniform import UniformQuantizer


class GroupedChannelQuantizer(UniformQuantizer):
    """Asymmetric uniform quantization with one (s_g, z_g) per group of
    input channels (see the module docstring). Buffers: ``scale``,
    ``zero_point`` (one per group), ``group`` (one per channel) and
    ``perm`` (the channels sorted by group, stable); their shapes are known
    after calibration and restore from a checkpoint (``CALIBRATED_SHAPES``).

    Args:
        bits: bit-width b.
        observer: a per-channel range observer.
        name: layer name used in messages.
    """

    # group / perm: one entry per channel, known after calibration
    CALIBRATED_SHAPES = UniformQuantizer.CALIBRATED_SHAPES + ('group',
                                                               'perm')

    def __init__(self,
                 bits: int = 8,
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        super().__init__(bits=bits, symmetric=False, granularity='channel',
                         ch_axis=-1, observer=observer, name=name)
        self.register_buffer('group', torch.empty(0, dtype=torch.long))
        self.register_buffer('perm', torch.empty(0, dtype=torch.long))

    @property
    def num_groups(self) -> int:
        return int(self.scale.numel())

    # -- what a subclass decides ------------------------------------------
    def channel_groups(self, lo: Tensor, hi: Tensor) -> Tensor:
        """The group of every channel (long, 0..G−1, shape (C,)) from the
        channel ranges [lo_c, hi_c]."""
        raise NotImplementedError

    def group_range(self, group: Tensor, lo: Tensor,
                    hi: Tensor) -> Tuple[Tensor, Tensor]:
        """[lo_g, hi_g] of every group; default: the union of its channels'
        ranges, [min lo_c, max hi_c] (widened to contain 0)."""
        num = int(group.max()) + 1
        g_lo = torch.zeros(num, device=lo.device).scatter_reduce(
            0, group, lo.float(), 'amin')
        g_hi = torch.zeros(num, device=hi.device).scatter_reduce(
            0, group, hi.float(), 'amax')
        return g_lo, g_hi

    # -- shared ------------------------------------------------------------
    def refresh_qparams(self) -> None:
        """Groups from the channel ranges, then each group's (s_g, z_g)
        (deferred by ``update_qparams`` while fake quantization is off:
        CAG's clustering is the costly part)."""
        lo, hi = self.observer.range()
        group = self.channel_groups(lo.float(), hi.float())
        self.group = group
        self.perm = torch.sort(group, stable=True).indices
        self.set_qparams(*self.qparams_from_range(
            *self.group_range(group, lo.float(), hi.float())))

    def quantize_with(self, x: Tensor, scale: Tensor,
                      zero_point: Tensor) -> Tensor:
        # per-group params gathered per channel (the last axis)
        if x.shape[-1] != self.group.numel():
            raise RuntimeError(
                f'{self.name or type(self).__name__}: calibrated for '
                f'{self.group.numel()} input channels, got a '
                f'{tuple(x.shape)} input')
        return self.fake_quant(x, scale[self.group], zero_point[self.group])

    def extra_repr(self) -> str:
        return super().extra_repr() + f', groups={self.num_groups}'

    def describe(self) -> dict:
        return dict(super().describe(), groups=self.num_groups)
