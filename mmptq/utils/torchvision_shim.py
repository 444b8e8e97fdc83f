"""A stand-in for the few parts of torchvision that mmpretrain 1.2 and
segment-anything 1.0 import.

mmpretrain 1.2.0 imports torchvision at module level (``models.heads`` via
``evaluation.metrics.visual_grounding_eval``, ``models.utils.box_utils``,
``datasets.transforms``), so without torchvision none of its models or
transforms can be built; segment-anything 1.0 imports it in
``automatic_mask_generator`` (box ops) and ``utils.transforms``
(``ResizeLongestSide``: PIL resize). ``make install`` installs the
torchvision that matches the installed torch where one is available (for
the CPU torch: the PyTorch CPU index's ``+cpu`` build; PyPI's build does
not load beside it: "operator torchvision::nms does not exist"); this
stand-in is the fallback, and says so once when it is used.

:func:`install_torchvision_shim` appends a finder to the *end* of
``sys.meta_path``: where a real torchvision is installed it is always found
first and the shim never loads. Otherwise ``import torchvision`` gets this
stand-in, which provides exactly what mmpretrain and segment-anything
touch:

- ``torchvision.ops.boxes``: ``box_area``, ``box_iou``,
  ``generalized_box_iou``, ``_upcast``, ``nms``, ``batched_nms`` (same
  math as torchvision's; ``nms`` is a plain greedy loop);
- ``torchvision.transforms.functional``: ``pil_to_tensor``,
  ``to_pil_image`` (uint8 arrays and tensors) and ``resize`` of a PIL
  image to an explicit ``(h, w)`` (PIL's resampling, as torchvision does
  for PIL images);
- ``torchvision.transforms.InterpolationMode`` and a ``RandomResizedCrop``
  placeholder (a base class for mmpretrain's MAE crop; building it raises).

Anything else raises an error saying that torchvision is not installed.
The first ``import torchvision`` it serves logs a note, once per process.
"""
import enum
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ['install_torchvision_shim', 'TorchvisionShimFinder']

SHIM_VERSION = '0.0.0+mmptq.shim'


def _missing(module: str) -> Callable[[str], object]:

    def __getattr__(name: str) -> object:
        if name.startswith('__'):
            raise AttributeError(name)
        raise AttributeError(
            f'{module}.{name}: torchvision is not installed; mmptq only '
            'provides a stand-in for what mmpretrain imports '
            '(mmptq/utils/torchvision_shim.py). Install a torchvision that '
            'matches your torch to use it.')

    return __getattr__


# ----------------------------------------------------------- ops.boxes
def _upcast(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(x1, y1, x2, y2)`` boxes, shape ``(N, )``."""
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_inter_union(boxes1: torch.Tensor, boxes2: torch.Tensor):
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area1[:, None] + area2 - inter


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU, shape ``(N, M)``."""
    inter, union = _box_inter_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1: torch.Tensor,
                        boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU, shape ``(N, M)``."""
    inter, union = _box_inter_union(boxes1, boxes2)
    iou = inter / union
    lti = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rbi = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    whi = _upcast(rbi - lti).clamp(min=0)
    areai = whi[..., 0] * whi[..., 1]
    return iou - (areai - union) / areai


def nms(boxes: torch.Tensor, scores: torch.Tensor,
        iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, by decreasing score."""
    iou = box_iou(boxes, boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in torch.argsort(scores, descending=True).tolist():
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor,
                idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category of ``idxs`` (boxes of different categories
    are moved apart, as torchvision's coordinate trick)."""
    if boxes.numel() == 0:
        return torch.empty((0, ), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# ----------------------------------------------------------- transforms
class InterpolationMode(enum.Enum):
    """Same members and values as torchvision's."""
    NEAREST = 'nearest'
    NEAREST_EXACT = 'nearest-exact'
    BILINEAR = 'bilinear'
    BICUBIC = 'bicubic'
    BOX = 'box'
    HAMMING = 'hamming'
    LANCZOS = 'lanczos'


class RandomResizedCrop(torch.nn.Module):
    """Placeholder: building it (or a subclass) raises."""

    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError(
            f'{type(self).__name__} needs torchvision, which is not '
            'installed (mmptq provides only a stand-in).')


def pil_to_tensor(pic) -> torch.Tensor:
    """A PIL image as a ``(C, H, W)`` tensor of its own dtype."""
    img = torch.as_tensor(np.array(pic, copy=True))
    if img.ndim == 2:
        img = img[:, :, None]
    return img.permute(2, 0, 1).contiguous()


def to_pil_image(pic) -> Image.Image:
    """A uint8 ``(H, W[, C])`` array or a ``(C, H, W)`` tensor (float in
    [0, 1] or uint8) as a PIL image."""
    if isinstance(pic, torch.Tensor):
        if pic.is_floating_point():
            pic = pic.mul(255).byte()
        pic = pic.permute(1, 2, 0).cpu().numpy()
    if pic.ndim == 3 and pic.shape[2] == 1:
        pic = pic[..., 0]
    if pic.dtype != np.uint8:
        raise TypeError('the torchvision stand-in converts uint8 images only, '
                        f'got {pic.dtype}')
    return Image.fromarray(pic)


_PIL_RESAMPLE = {
    InterpolationMode.NEAREST: Image.NEAREST,
    InterpolationMode.BILINEAR: Image.BILINEAR,
    InterpolationMode.BICUBIC: Image.BICUBIC,
    InterpolationMode.BOX: Image.BOX,
    InterpolationMode.HAMMING: Image.HAMMING,
    InterpolationMode.LANCZOS: Image.LANCZOS,
}


def resize(img: Image.Image, size: Sequence[int],
           interpolation: InterpolationMode = InterpolationMode.BILINEAR,
           max_size: Optional[int] = None, antialias=True) -> Image.Image:
    """A PIL image resized to ``size = (h, w)`` with PIL's resampling."""
    if not isinstance(img, Image.Image) or isinstance(size, int) or \
            len(size) != 2 or max_size:
        raise TypeError('the torchvision stand-in resizes PIL images to an '
                        'explicit (h, w) only')
    return img.resize((size[1], size[0]), _PIL_RESAMPLE[interpolation])


# ----------------------------------------------------------- the finder
def _fill(module: types.ModuleType, attrs: Dict[str, object]) -> None:
    module.__dict__.update(attrs)
    module.__getattr__ = _missing(module.__name__)  # type: ignore[attr-defined]


_MODULES: Dict[str, Dict[str, object]] = {
    'torchvision': dict(__version__=SHIM_VERSION, __mmptq_shim__=True),
    'torchvision.ops': dict(box_area=box_area, box_iou=box_iou,
                            generalized_box_iou=generalized_box_iou,
                            nms=nms, batched_nms=batched_nms),
    'torchvision.ops.boxes': dict(box_area=box_area, box_iou=box_iou,
                                  generalized_box_iou=generalized_box_iou,
                                  _upcast=_upcast,
                                  _box_inter_union=_box_inter_union,
                                  nms=nms, batched_nms=batched_nms),
    'torchvision.transforms': dict(InterpolationMode=InterpolationMode,
                                   RandomResizedCrop=RandomResizedCrop),
    'torchvision.transforms.transforms': dict(
        InterpolationMode=InterpolationMode,
        RandomResizedCrop=RandomResizedCrop),
    'torchvision.transforms.functional': dict(
        InterpolationMode=InterpolationMode, pil_to_tensor=pil_to_tensor,
        to_pil_image=to_pil_image, resize=resize),
}
_PACKAGES = ('torchvision', 'torchvision.ops', 'torchvision.transforms')


class TorchvisionShimFinder(importlib.abc.MetaPathFinder,
                            importlib.abc.Loader):
    """Serves the stand-in modules; sits last on ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in _MODULES:
            return None
        return importlib.util.spec_from_loader(
            fullname, self, is_package=fullname in _PACKAGES)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        _fill(module, _MODULES[module.__name__])
        if module.__name__ == 'torchvision':
            _announce()


_ANNOUNCED = []


def _announce() -> None:
    """Say once per process that the stand-in is what ``import
    torchvision`` got."""
    if _ANNOUNCED:
        return
    _ANNOUNCED.append(True)
    # stderr: a diagnostic, not part of any program's output
    print('mmptq: no torchvision is installed; `import torchvision` gets '
          "mmptq's stand-in (mmptq/utils/torchvision_shim.py: the box ops "
          'and transforms mmpretrain imports). Install the torchvision that '
          f'matches torch {torch.__version__} for its other features (see '
          'docs/install.md).', file=sys.stderr)


def install_torchvision_shim() -> bool:
    """Let ``import torchvision`` fall back to the stand-in (idempotent).

    Returns:
        True if the shim is in place, False if a real torchvision exists
        (then nothing is changed).
    """
    if any(isinstance(f, TorchvisionShimFinder) for f in sys.meta_path):
        return True
    loaded = sys.modules.get('torchvision')
    if loaded is not None or importlib.util.find_spec('torchvision'):
        return False
    sys.meta_path.append(TorchvisionShimFinder())
    return True
