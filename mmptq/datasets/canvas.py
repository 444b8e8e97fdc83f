"""Deterministic multi-digit canvases from real MNIST digits.

Canvas ``i`` of a split depends only on ``(seed, split, i)`` and on the
digits it draws from a seeded permutation of the MNIST split (consumed in
order, without replacement until the split is used up), so the first ``n``
canvases of a larger build equal a build of ``n``. ``mnist_det`` and
``mnist_seg`` call the same :func:`generate_canvases` and so see the same
pictures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator, List

import cv2
import numpy as np

#: seed-sequence codes that keep the streams of the splits apart
SPLIT_CODES = {'train': 1, 'test': 2}


@dataclass(frozen=True)
class CanvasConfig:
    """How canvases look.

    Attributes:
        size: canvas height and width (pixels).
        min_digits / max_digits: digits per canvas (inclusive range).
        min_scale / max_scale: side of a scaled 28x28 MNIST digit (pixels).
        max_iou: the largest box IoU allowed between two digits; digit masks
            never overlap.
        mask_threshold: a scaled digit pixel (0-255) at or above this belongs
            to the instance / semantic mask.
        bg_max: background base colour, per channel, is drawn in [0, bg_max].
        bg_variation: amplitude of a smooth (bicubic 4x4) background field.
        noise_std: std of per-pixel Gaussian noise (0: none; noise makes the
            PNGs about 3x bigger).
        fg_min: digit colour, per channel, is drawn in [fg_min, 255].
        max_tries: placements tried per digit before it is dropped.
    """

    size: int = 128
    min_digits: int = 1
    max_digits: int = 6
    min_scale: int = 20
    max_scale: int = 56
    max_iou: float = 0.3
    mask_threshold: int = 128
    bg_max: int = 40
    bg_variation: float = 10.0
    noise_std: float = 0.0
    fg_min: int = 150
    max_tries: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError('need 1 <= min_digits <= max_digits')
        if not 8 <= self.min_scale <= self.max_scale <= self.size:
            raise ValueError(f'need 8 <= min_scale <= max_scale <= size '
                             f'({self.size}), got {self.min_scale}, '
                             f'{self.max_scale}')

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Instance:
    """One digit on a canvas: class, COCO box ``[x, y, w, h]`` (tight around
    the digit's non-zero pixels), mask (H, W) bool and its MNIST index."""

    label: int
    bbox: List[float]
    mask: np.ndarray
    mnist_index: int


@dataclass
class Canvas:
    """A generated picture (H, W, 3) RGB uint8 and its digits."""

    index: int
    image: np.ndarray
    instances: List[Instance] = field(default_factory=list)

    def semantic_map(self) -> np.ndarray:
        """uint8 (H, W): 0 background, digit d -> d + 1."""
        seg = np.zeros(self.image.shape[:2], np.uint8)
        for inst in self.instances:
            seg[inst.mask] = inst.label + 1
        return seg


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` (x0, y0, x1, y1) with boxes ``b`` (N, 4)."""
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter)


class _SourceStream:
    """MNIST indices from seeded permutations of the split, in order."""

    def __init__(self, n: int, seed: int, code: int) -> None:
        self.n = n
        self.rng = np.random.default_rng([seed, code, 0])
        self.perm = self.rng.permutation(n)
        self.pos = 0

    def take(self, k: int) -> List[int]:
        out = []
        for _ in range(k):
            if self.pos == len(self.perm):
                self.perm = self.rng.permutation(self.n)
                self.pos = 0
            out.append(int(self.perm[self.pos]))
            self.pos += 1
        return out


def _background(rng: np.random.Generator, cfg: CanvasConfig) -> np.ndarray:
    size = cfg.size
    base = rng.integers(0, cfg.bg_max + 1, 3).astype(np.float32)
    field4 = rng.uniform(-cfg.bg_variation, cfg.bg_variation,
                         (4, 4, 3)).astype(np.float32)
    img = cv2.resize(field4, (size, size), interpolation=cv2.INTER_CUBIC)
    img = img + base
    if cfg.noise_std > 0:
        img = img + rng.normal(0, cfg.noise_std, img.shape).astype(np.float32)
    return np.clip(img, 0, 255)


def generate_canvases(images: np.ndarray, labels: np.ndarray, num: int,
                      seed: int, split: str,
                      cfg: CanvasConfig = CanvasConfig()) -> Iterator[Canvas]:
    """Yield ``num`` canvases built from the digits ``images`` (N, 28, 28)
    uint8 with ``labels`` (N,) of MNIST split ``split`` ('train'/'test')."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    code = SPLIT_CODES[split]
    sources = _SourceStream(len(images), seed, code)
    size = cfg.size
    for i in range(num):
        rng = np.random.default_rng([seed, code, 1, i])
        img = _background(rng, cfg)
        k = int(rng.integers(cfg.min_digits, cfg.max_digits + 1))
        occupied = np.zeros((size, size), bool)
        boxes = np.zeros((0, 4), np.float64)
        canvas = Canvas(i, img)
        for src in sources.take(k):
            side = int(rng.integers(cfg.min_scale, cfg.max_scale + 1))
            color = rng.integers(cfg.fg_min, 256, 3).astype(np.float32)
            digit = cv2.resize(images[src], (side, side),
                               interpolation=cv2.INTER_LINEAR)
            nz_rows = np.flatnonzero(digit.any(1))
            nz_cols = np.flatnonzero(digit.any(0))
            mask = digit >= cfg.mask_threshold
            if not mask.any():
                continue
            # tight box inside the patch: [c0, r0, c1 + 1, r1 + 1]
            tight = np.array([nz_cols[0], nz_rows[0], nz_cols[-1] + 1,
                              nz_rows[-1] + 1], np.float64)
            for _ in range(cfg.max_tries):
                y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
                box = tight + [x, y, x, y]
                if len(boxes) and _box_iou(box, boxes).max() > cfg.max_iou:
                    continue
                if occupied[y:y + side, x:x + side][mask].any():
                    continue
                break
            else:
                continue  # no room: the digit is dropped
            alpha = (digit.astype(np.float32) / 255.0)[..., None]
            patch = img[y:y + side, x:x + side]
            img[y:y + side, x:x + side] = patch * (1 - alpha) + color * alpha
            full = np.zeros((size, size), bool)
            full[y:y + side, x:x + side] = mask
            occupied |= full
            boxes = np.concatenate([boxes, box[None]])
            canvas.instances.append(Instance(
                int(labels[src]),
                [float(box[0]), float(box[1]), float(box[2] - box[0]),
                 float(box[3] - box[1])], full, src))
        canvas.image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        yield canvas
