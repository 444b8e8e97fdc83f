"""Reorder-based Outlier-Retained Quantization (RORQ) of PTQ4RIS (Jiang et
al., ICRA 2025, arXiv:2409.17020): the inputs of the text encoder's Linear
layers, whose few outlier channels would stretch a per-tensor range.

The input channels are split into groups by their magnitude m_c =
max |x_c| (over the calibration data), iteratively: over the channels not
yet assigned, τ = mean(m) + 3·std(m); those with m_c ≤ τ form the next
group, the others go on; at most N groups, the last one takes every
channel left. Each group has its own asymmetric uniform quantizer.

The reorder, in hardware: with ``perm`` the channels sorted by group, every
group is a contiguous slice of the reordered input, so a kernel runs one
per-tensor quantized GEMM per slice (or one GEMM with a per-slice input
scale) and adds the slices' partial sums. The reorder costs nothing at run
time: it is folded offline into the weights (:func:`fold_reorder`). The
consumer Linear's input columns become W[:, perm]; the producer writes its
outputs in the new order: a Linear producer's output rows (W_p[perm],
b_p[perm]; an elementwise activation between them, e.g. BERT's GELU, is
order-free); a LayerNorm producer gets γ[perm], β[perm] and reads its
input through the same index (its mean and variance do not depend on the
channel order), i.e. the residual stream that feeds it is stored in the
new order. Where the producer is not foldable (attention's context, whose
channels are tied to heads), the reorder is a gather on the load.

The reference (gugu511yy/PTQ4RIS, ``ptq4vit_utils/quant_bert.py``,
``BERTVARActQuantizer``, used by ``QuantLinear_bert`` for every Linear
under ``text_encoder``) groups per value, not per channel: its threshold
is over all non-zero elements of the tensor and a value's group is where
its |x| falls (lines 320-356), so it has no reorder to make. It also puts
values above its last threshold into group 0 (``group_indices`` stays 0
outside every (τ_{i−1}, τ_i], lines 296-304), and with one value left it
takes ``var()`` of one element: a NaN threshold (line 332). Here channels
above the last threshold are in the last group and the splitting stops
when fewer than 2 channels are left. (It marks assigned values by zeroing
them, so exact zeros never count in its statistics; it calibrates on the
first batch it sees, all 32 samples at once.)
"""
from typing import Optional

import torch
from torch import Tensor, nn

from mmptq.registry import QUANTIZERS
from .grouped import GroupedChannelQuantizer


def outlier_groups(stat: Tensor, max_groups: int = 10,
                   k: float = 3.0) -> Tensor:
    """RORQ's iterative outlier split (PTQ4RIS, RORQ): over the
    entries not yet assigned, τ = mean + k·std (unbiased std, as the
    reference's ``var()``); entries ≤ τ form the next group. Stops when
    ``max_groups`` − 1 groups are formed, when nothing is above τ or when
    fewer than 2 entries are left; the entries left form the last group.

    Args:
        stat: the statistic per channel, shape (C,).
        max_groups: N, the most groups.
        k: the number of standard deviations of the threshold.

    Returns:
        The group of every channel (0 = smallest), long, shape (C,).
    """
    if max_groups < 1:
        raise ValueError(f'max_groups={max_groups} must be >= 1')
    stat = stat.detach().float()
    group = torch.zeros(stat.shape, dtype=torch.long, device=stat.device)
    left = torch.ones(stat.shape, dtype=torch.bool, device=stat.device)
    g = 0
    while g < max_groups - 1 and int(left.sum()) >= 2:
        vals = stat[left]
        tau = vals.mean() + k * vals.std()
        inliers = left & (stat <= tau)
        if int(inliers.sum()) == int(left.sum()):
            break
        group[inliers] = g
        left &= ~inliers
        g += 1
    group[left] = g
    return group


@QUANTIZERS.register_module()
class OutlierReorderQuantizer(GroupedChannelQuantizer):
    """Reorder-based Outlier-Retained Quantization (RORQ; PTQ4RIS, Jiang et
    al. 2025): the channels (last axis: a Linear's input, channels last;
    not for Conv inputs) in groups by :func:`outlier_groups` of m_c = max |x_c|; group g
    has an asymmetric uniform quantizer over [lo_g, hi_g], the range of
    its channels (widened to contain 0):

        s_g = (hi_g − lo_g)/(2^b − 1),  z_g = −round(lo_g/s_g),
        x̂_c = (clamp(round(x_c/s_g) + z_g, 0, 2^b − 1) − z_g)·s_g, g = g(c).

    The channel ranges are the observer's per-channel [min, max] over the
    calibration batches (``MinMaxObserver`` by default; the reference
    takes them from one batch holding all calibration samples). Buffers:
    ``scale``, ``zero_point`` (one per group), ``group`` (one per channel)
    and ``perm`` (the channels sorted by group: the reorder, see the
    module docstring and :func:`fold_reorder`); their shapes are known
    after calibration and restore from a checkpoint.

    Args:
        bits: bit-width b.
        max_groups: N, the most groups (the reference's ``max_iters``,
            10).
        k: the threshold's number of standard deviations.
        observer: a per-channel range observer (default MinMaxObserver).
        name: layer name used in messages.
    """

    def __init__(self,
                 bits: int = 8,
                 max_groups: int = 10,
                 k: float = 3.0,
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        super().__init__(bits=bits, observer=observer, name=name)
        if max_groups < 1:
            raise ValueError(f'{name or "OutlierReorderQuantizer"}: '
                             f'max_groups={max_groups} must be >= 1')
        self.max_groups = max_groups
        self.k = k

    def channel_groups(self, lo: Tensor, hi: Tensor) -> Tensor:
        """:func:`outlier_groups` of m_c = max |x_c|."""
        return outlier_groups(torch.maximum(-lo.clamp(max=0.0),
                                            hi.clamp(min=0.0)),
                              self.max_groups, self.k)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', max_groups={self.max_groups}'


def _permute_(param: Optional[Tensor], perm: Tensor, dim: int) -> None:
    if param is not None and param.numel():
        param.data = param.data.index_select(dim, perm.to(param.device))


def fold_reorder(perm: Tensor,
                 consumer: nn.Module,
                 producer: Optional[nn.Module] = None,
                 quantizer: Optional[GroupedChannelQuantizer] = None) -> None:
    """Fold the channel reorder ``perm`` (the new order: new channel i is
    old channel perm[i]) into the weights, in place (see the module
    docstring): the consumer Linear's input columns W[:, perm]; a Linear
    producer's output rows W_p[perm], b_p[perm] (and its per-channel weight
    quantizer's scale / zero point); a LayerNorm producer's γ[perm],
    β[perm] (it must then read its input in the new order). With
    ``quantizer`` (the consumer's RORQ or CAG input quantizer) its ``group``
    becomes group[perm] (contiguous) and ``perm`` the identity.

    Args:
        perm: the new channel order, shape (C,).
        consumer: the Linear whose input channels are reordered.
        producer: the Linear or LayerNorm that computes that input, or
            None (reorder by a gather on the load).
        quantizer: the consumer's input quantizer, or None.
    """
    perm = perm.long()
    _permute_(consumer.weight, perm, 1)
    if producer is not None:
        _permute_(producer.weight, perm, 0)
        _permute_(producer.bias, perm, 0)
        wq = getattr(producer, 'weight_quantizer', None)
        if producer.weight.dim() > 1 and wq is not None and \
                wq.calibrated and wq.granularity == 'channel' and \
                wq.ch_axis == 0:
            wq.set_qparams(wq.scale.index_select(0, perm),
                           wq.zero_point.index_select(0, perm))
    if quantizer is not None and quantizer.group.numel():
        quantizer.group = quantizer.group.index_select(0, perm)
        quantizer.perm = torch.arange(perm.numel(), device=perm.device)
