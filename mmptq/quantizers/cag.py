"""Channel-Aware Grouping (CAG) of AHCPTQ (Zhang et al., ICCV 2025,
arXiv:2503.03088): the inputs of the linear projections (SAM's qkv /
q_proj / k_proj / v_proj and the MLPs' lin1), whose channels differ widely
in range. Per tensor is too coarse, per channel is not
accelerator-friendly; CAG clusters the channels into G groups (4 in the
reference) that share one asymmetric uniform quantizer.

Clustering, progressively: every channel starts as its own cluster with
the point (lo_c, hi_c), its calibrated range; k-means merges the clusters
into 8G, then 4G, 2G and G clusters (the reference's schedule), each stage
clustering the previous stage's centres weighted by their channel counts.
Group g quantizes with the union of its channels' ranges,

    [lo_g, hi_g] = [min_{c∈g} lo_c, max_{c∈g} hi_c],

so that no channel is clipped more than per tensor and every group's
step is at most the per-tensor step. The shared structure (gather per
channel, ``group`` / ``perm`` buffers, the reorder into contiguous slices)
is ``GroupedChannelQuantizer``'s.

The reference (Keio-CSG/AHCPTQ, ``GroupLSQFakeQuantize``) clusters the raw
(s_c, z_c) pairs with scikit-learn's KMeans: the zero point, in codes
(0..2^b−1), outweighs the step (a fraction of the range) in the distance,
so its clusters are mostly clusters of zero points. (lo_c, hi_c) are in
one unit, the activation's. The reference quantizes a group with the
k-means centre of its channels' (s_c, z_c), i.e. about their mean range:
that clips the group's wider channels, and on the demo SAM without
reconstruction it lost up to 2.4 dB of SQNR against per tensor on the
image encoder's qkv / lin1 inputs and 0.9 mask AP (docs/methods/ahcptq.md);
the union does not clip. The reference also interleaves the stages
with its reconstruction (``recon.py``: 8G, 4G, 2G, G clusters at 20, 40,
60 and 80 % of the iterations, per-channel steps learned by LSQ before the
first stage and the cluster steps between, each stage clustering the
learned (s, z)); mmptq's reconstruction is not CAG-aware, so all stages
run at the end of calibration and reconstruction, if configured, learns
the G group steps (LSQ) afterwards.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmptq.registry import QUANTIZERS
from .grouped import GroupedChannelQuantizer


def kmeans(points: Tensor, k: int, weights: Optional[Tensor] = None,
           iters: int = 100, restarts: int = 8,
           seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Weighted k-means (Lloyd's algorithm, k-means++ seeding) on the rows
    of ``points``: minimises Σ_i w_i·||p_i − μ_{a(i)}||², the best of
    ``restarts`` seedings from a generator seeded with ``seed``
    (deterministic). An emptied cluster is re-seeded at the point farthest
    from its centre.

    Args:
        points: (N, D) points.
        k: the number of clusters, 1 <= k <= N.
        weights: (N,) positive weights (default: ones).
        iters: the most Lloyd iterations per seeding.
        restarts: the number of seedings.
        seed: the seed of the seedings.

    Returns:
        (labels (N,) long, centres (k, D)).
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f'kmeans: k={k} must be in [1, {n}] (the number '
                         f'of points)')
    points = points.double()
    w = (torch.ones(n, dtype=torch.float64, device=points.device)
         if weights is None else weights.double())
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        # k-means++: the first centre by weight, each next one with
        # probability ∝ w·(squared distance to the nearest centre)
        idx = [int(torch.multinomial(w.cpu(), 1, generator=gen))]
        for _ in range(1, k):
            d2 = torch.cdist(points, points[idx]).pow(2).amin(1)
            prob = (w * d2).cpu()
            if float(prob.sum()) <= 0:  # fewer distinct points than k
                prob = torch.ones(n, dtype=torch.float64)
                prob[idx] = 0
            idx.append(int(torch.multinomial(prob, 1, generator=gen)))
        centres = points[idx].clone()
        labels = None
        for _ in range(iters):
            dist = torch.cdist(points, centres)
            new = dist.argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            mass = torch.zeros(k, dtype=torch.float64,
                               device=points.device).index_add_(0, labels, w)
            sums = torch.zeros_like(centres).index_add_(
                0, labels, points * w[:, None])
            empty = mass == 0
            centres = sums / mass.clamp(min=1e-300)[:, None]
            for j in torch.nonzero(empty).flatten().tolist():
                far = int((dist.gather(1, labels[:, None])[:, 0]).argmax())
                centres[j] = points[far]
        dist = torch.cdist(points, centres)
        labels = dist.argmin(1)
        inertia = float((w * dist.gather(1, labels[:, None])[:, 0]**2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centres)
    return best[1], best[2].to(torch.float32)


def progressive_groups(points: Tensor, groups: int,
                       stages: Sequence[int] = (8, 4, 2),
                       seed: int = 0) -> Tensor:
    """CAG's progressive clustering (AHCPTQ): the channels'
    points merged by :func:`kmeans` into m·G clusters for each m of
    ``stages`` in order, then into G; each stage clusters the previous
    stage's centres, weighted by their channel counts (a stage with at
    least as many clusters as points is skipped). Groups are numbered by
    the width hi − lo of their centre, narrowest first (points (lo, hi)).

    Args:
        points: (C, D) one point per channel; for CAG (lo_c, hi_c).
        groups: G, the number of groups at the end (G >= C: per channel).
        stages: the multiples of G of the intermediate stages.
        seed: the k-means seed.

    Returns:
        The group of every channel, long, shape (C,).
    """
    if groups < 1:
        raise ValueError(f'groups={groups} must be >= 1')
    num = points.shape[0]
    label = torch.arange(num, device=points.device)
    centres = points.float()
    mass = torch.ones(num, device=points.device)
    for k in [groups * m for m in stages] + [groups]:
        if k >= centres.shape[0]:
            continue
        sub, new = kmeans(centres, k, mass, seed=seed)
        label = sub[label]
        mass = torch.zeros(k, device=points.device).index_add_(0, sub, mass)
        centres = new
    # renumber: narrowest centre first (ties by first channel), so the
    # numbering does not depend on the k-means seeding
    width = centres[:, -1] - centres[:, 0] if centres.shape[1] > 1 \
        else centres[:, 0]
    first = torch.full((centres.shape[0], ), num, device=points.device,
                       dtype=torch.long).scatter_reduce(
                           0, label, torch.arange(num, device=label.device),
                           'amin')
    order = sorted(range(centres.shape[0]),
                   key=lambda g: (float(width[g]), int(first[g])))
    rank = torch.empty_like(first)
    rank[torch.tensor(order, device=label.device)] = torch.arange(
        len(order), device=label.device)
    return rank[label]


@QUANTIZERS.register_module()
class CAGQuantizer(GroupedChannelQuantizer):
    """Channel-Aware Grouping (CAG; AHCPTQ, Zhang et al. 2025):
    the input channels (last axis) in G groups by
    :func:`progressive_groups` of their ranges (lo_c, hi_c); group g has
    the asymmetric uniform quantizer of the union of its channels' ranges
    (see the module docstring). G >= C is per-channel quantization with
    the same observer; G = 1 is per tensor.

    Buffers: ``scale``, ``zero_point`` (one per group), ``group`` (one per
    channel), ``perm`` (channels sorted by group); saved in quantized
    checkpoints. Reconstruction learns the G steps like any uniform
    quantizer's (LSQ).

    Args:
        bits: bit-width b.
        groups: G (the reference's ``group``, 4).
        stages: the intermediate cluster counts as multiples of G
            (the reference's 8G, 4G, 2G).
        seed: the k-means seed.
        observer: a per-channel range observer (default
            ``AvgMinMaxObserver``: the mean over batches of each batch's
            per-channel min / max, the reference's
            ``AvgMinMaxGroupObserver``).
        name: layer name used in messages.
    """

    def __init__(self,
                 bits: int = 4,
                 groups: int = 4,
                 stages: Sequence[int] = (8, 4, 2),
                 seed: int = 0,
                 observer: Optional[dict] = None,
                 name: str = '') -> None:
        who = name or 'CAGQuantizer'
        if isinstance(groups, bool) or not isinstance(groups, int) or \
                groups < 1:
            raise ValueError(f'{who}: groups={groups!r} must be a positive '
                             f'integer (1: per tensor; the reference uses 4)')
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1
               for m in stages):
            raise ValueError(f'{who}: stages={stages!r} must be positive '
                             f'integers (multiples of groups), e.g. (8, 4, 2)')
        super().__init__(bits=bits,
                         observer=observer or dict(type='AvgMinMaxObserver'),
                         name=name)
        self.groups = groups
        self.stages = tuple(stages)
        self.seed = seed

    def channel_groups(self, lo: Tensor, hi: Tensor) -> Tensor:
        """:func:`progressive_groups` of the points (lo_c, hi_c)."""
        return progressive_groups(torch.stack([lo, hi], dim=1), self.groups,
                                  self.stages, self.seed)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', max_groups={self.groups}'
