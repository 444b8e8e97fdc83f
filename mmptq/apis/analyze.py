"""Data-free analysis of a config: build the model with random weights,
feed image-like synthetic batches, and measure how far the quantized model
is from FP (SQNR of the logits or, for detectors, the neck features)."""
import copy
import math
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.registry import MODELS, init_default_scope
from torch import Tensor, nn

from mmptq.core import QuantSummary, quantize_model
from .benchmark import PeakMemory
from .runner_setup import load_config

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def image_like(num: int, size: Tuple[int, int], seed: int = 0) -> List[Tensor]:
    """uint8 (3, H, W) images with natural-image statistics: smooth colour
    fields, a few sharp edges and mild pixel noise (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    imgs = []
    for _ in range(num):
        coarse = torch.rand(1, 3, max(h // 16, 2), max(w // 16, 2), generator=g)
        img = F.interpolate(coarse, size=(h, w), mode='bilinear',
                            align_corners=False)[0]
        for _ in range(3):  # rectangles: edges at random places
            y0, x0 = (torch.randint(0, s - 1, (1, ), generator=g).item()
                      for s in (h, w))
            y1 = y0 + torch.randint(1, h - y0, (1, ), generator=g).item()
            x1 = x0 + torch.randint(1, w - x0, (1, ), generator=g).item()
            img[:, y0:y1, x0:x1] = torch.rand(3, 1, 1, generator=g)
        img = img + 0.03 * torch.randn(3, h, w, generator=g)
        imgs.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
    return imgs


def build_random_model(config: str, cfg_options: Optional[dict] = None,
                       seed: int = 0) -> Tuple[nn.Module, str]:
    """(model with random weights, scope) from a config file, initialised
    as training would start (``init_weights()``: the classes' own
    ``init_cfg``, e.g. Kaiming convs and BN at 1) except that every
    ``Pretrained`` init and ``pretrained`` path is dropped: nothing is
    downloaded. (PyTorch's default init alone can make a deep net's signal
    vanish, e.g. EfficientNet's to ~1e-22: an SQNR of the head's bias.)

    Args:
        config: a config file or a packaged one (``mmdet::...``).
        cfg_options: overrides merged into the config.
        seed: the weights depend only on it, not on what ran before.
    """
    cfg = load_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{config}: default_scope={scope!r}; mmptq analyses '
                         f'{SCOPES} configs')
    init_default_scope(scope)
    _drop_pretrained(cfg.model)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval(), scope


def _is_pretrained(init_cfg) -> bool:
    return isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'


def _drop_pretrained(node) -> None:
    """Remove ``Pretrained`` ``init_cfg`` entries from a model config, in
    place (an init_cfg left empty is removed: the class's default init
    applies), and set ``pretrained`` paths to None."""
    if isinstance(node, dict):
        for key in list(node):
            if key == 'pretrained':
                node[key] = None
            elif key == 'init_cfg' and node[key] is not None:
                entries = node[key] if isinstance(node[key], (list, tuple)) \
                    else [node[key]]
                kept = [c for c in entries if not _is_pretrained(c)]
                if not kept:
                    del node[key]
                elif len(kept) < len(entries):
                    node[key] = kept
            else:
                _drop_pretrained(node[key])
    elif isinstance(node, (list, tuple)):
        for item in node:
            _drop_pretrained(item)


def synthetic_batch(scope: str, num: int, size: Tuple[int, int],
                    seed: int = 0) -> dict:
    """A dataloader-style batch (``inputs`` + ``data_samples``) of
    image-like pictures for an mmdet / mmseg / mmpretrain model."""
    meta = dict(img_shape=tuple(size), ori_shape=tuple(size),
                pad_shape=tuple(size), scale_factor=(1.0, 1.0))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    elif scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmpretrain.structures import DataSample as Sample
    samples = [Sample(metainfo=dict(meta, img_id=i)) for i in range(num)]
    return dict(inputs=image_like(num, size, seed), data_samples=samples)


def tensor_outputs(model: nn.Module, scope: str, batch: dict) -> List[Tensor]:
    """The tensors compared with FP: logits (mmpretrain, mmseg) or the
    backbone + neck features (mmdet)."""
    with torch.no_grad():
        data = model.data_preprocessor(copy.copy(batch), False)
        if scope == 'mmdet':
            return list(model.extract_feat(data['inputs']))
        out = model(data['inputs'], data['data_samples'], mode='tensor')
        return list(out) if isinstance(out, (tuple, list)) else [out]


def db(signal: float, noise: float) -> float:
    """10·log10(signal / noise); inf without noise."""
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def sqnr_db(ref: Sequence[Tensor], out: Sequence[Tensor]) -> float:
    """10·log10(Σ ref² / Σ (ref − out)²) over all tensors."""
    signal = sum(float(r.double().pow(2).sum()) for r in ref)
    noise = sum(float((r.double() - o.double()).pow(2).sum())
                for r, o in zip(ref, out))
    return db(signal, noise)


@dataclass
class SQNRResult:
    """``quantization_sqnr``'s answer: the SQNR (dB), the summary, and the
    cost of ``quantize_model``: seconds and peak memory (MiB; process RSS
    on CPU, allocated memory on CUDA)."""
    sqnr: float
    summary: QuantSummary
    calib_s: float
    peak_mib: float


def quantization_sqnr(model: nn.Module, scope: str, quant_cfg: dict,
                      calib: List[dict], test: dict) -> SQNRResult:
    """SQNR (dB) of ``model`` quantized with ``quant_cfg`` on ``calib``
    against the FP model, measured on the batch ``test``."""
    ref = tensor_outputs(model, scope, test)
    qmodel = copy.deepcopy(model)
    start = time.perf_counter()
    with PeakMemory(next(model.parameters()).is_cuda) as mem:
        qmodel, summary = quantize_model(qmodel, quant_cfg, calib)
    seconds = time.perf_counter() - start
    return SQNRResult(sqnr_db(ref, tensor_outputs(qmodel, scope, test)),
                      summary, seconds, mem.peak_mib)
