"""mmptq.utils.torchvision_shim: what mmpretrain needs of torchvision."""
import numpy as np
import pytest
import torch
from PIL import Image

from mmptq.utils import install_torchvision_shim

pytestmark = pytest.mark.skipif(
    not install_torchvision_shim(), reason='a real torchvision is installed')


def _iou_ref(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0., x2 - x1) * max(0., y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def test_box_ops():
    from torchvision.ops import boxes
    b1 = torch.tensor([[0., 0., 2., 2.], [1., 1., 3., 4.]])
    b2 = torch.tensor([[1., 1., 2., 2.], [5., 5., 6., 6.], [0., 0., 2., 2.]])
    iou = boxes.box_iou(b1, b2)
    ref = torch.tensor([[_iou_ref(a, b) for b in b2.tolist()]
                        for a in b1.tolist()])
    torch.testing.assert_close(iou, ref)
    torch.testing.assert_close(boxes.box_area(b1), torch.tensor([4., 6.]))
    giou = boxes.generalized_box_iou(b1, b2)
    # disjoint unit boxes at (0,0)-(2,2) and (5,5)-(6,6): hull 36, union 5
    assert giou[0, 1].item() == pytest.approx(0. - (36. - 5.) / 36.)
    assert giou[0, 2].item() == pytest.approx(1.)  # identical boxes
    assert boxes._upcast(torch.ones(1, dtype=torch.float16)).dtype == \
        torch.float32


def test_pil_to_tensor_and_missing():
    import torchvision
    import torchvision.transforms.functional as F
    arr = (np.arange(2 * 3 * 3) % 255).astype(np.uint8).reshape(2, 3, 3)
    t = F.pil_to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 2, 3) and torch.equal(t.permute(1, 2, 0),
                                                torch.from_numpy(arr))
    assert F.pil_to_tensor(Image.fromarray(arr[..., 0])).shape == (1, 2, 3)
    with pytest.raises(AttributeError, match='torchvision is not installed'):
        torchvision.models  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        import torchvision.datasets  # noqa: F401


def test_mmpretrain_builds():
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS, TRANSFORMS
    init_default_scope('mmpretrain')
    model = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='VisionTransformer', arch='deit-tiny',
                          img_size=32, patch_size=16),
            neck=None,
            head=dict(type='VisionTransformerClsHead', num_classes=10,
                      in_channels=192)))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 10)
    with pytest.raises(RuntimeError, match='needs torchvision'):
        TRANSFORMS.build(dict(type='MAERandomResizedCrop', size=32))


def test_nms():
    from torchvision.ops.boxes import batched_nms, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.],
                          [20., 20., 30., 30.], [0., 0., 10., 9.]])
    scores = torch.tensor([0.5, 0.9, 0.4, 0.8])
    # IoU(1, 0) = 81/119, IoU(1, 3) = 72/118, IoU(0, 3) = 0.9
    assert nms(boxes, scores, 0.65).tolist() == [1, 3, 2]
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 3, 0, 2]
    # another category is never suppressed
    idxs = torch.tensor([0, 0, 0, 1])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 3, 2]
    assert batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).shape == (0, )


def test_resize_and_to_pil_image():
    import torchvision.transforms.functional as F
    arr = np.random.RandomState(0).randint(0, 256, (5, 7, 3),
                                           dtype=np.uint8)
    pil = F.to_pil_image(arr)
    assert np.array_equal(np.array(pil), arr)
    assert np.array_equal(np.array(F.to_pil_image(torch.from_numpy(
        arr).permute(2, 0, 1))), arr)
    out = F.resize(pil, (9, 13))
    assert out.size == (13, 9)  # PIL: (w, h)
    assert np.array_equal(np.array(out),
                          np.array(Image.fromarray(arr).resize(
                              (13, 9), Image.BILINEAR)))
    with pytest.raises(TypeError, match='explicit'):
        F.resize(pil, 9)


def test_segment_anything_imports():
    from segment_anything import SamAutomaticMaskGenerator  # noqa: F401
    from segment_anything.utils.transforms import ResizeLongestSide
    img = np.zeros((30, 50, 3), dtype=np.uint8)
    assert ResizeLongestSide(64).apply_image(img).shape == (38, 64, 3)
