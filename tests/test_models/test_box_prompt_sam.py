"""mmptq.models.BoxPromptSAM: SAM prompted by boxes, as an mmdet detector."""
import pickle

import numpy as np
import pytest
import torch
from mmdet.datasets import CocoDataset
from mmdet.datasets.transforms import PackDetInputs, Resize
from mmdet.evaluation import CocoMetric
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.structures import InstanceData
from segment_anything import SamPredictor, build_sam_vit_b, build_sam_vit_l
from segment_anything.modeling import Sam

from mmptq.apis import quantize_model
from mmptq.engine import UnsafeCheckpointError, install_safe_loader
from mmptq.models import BoxPromptSAM
from e2e_utils import REPO_ROOT, make_tiny_coco

#: a small SAM: ViT encoder 64-dim / depth 2 with windows and a global
#: block, 64x64 input; the standard prompt encoder and decoder, 32-dim
TINY_SAM = dict(
    image_encoder=dict(embed_dim=64, depth=2, num_heads=2, img_size=64,
                       patch_size=8, window_size=4, global_attn_indexes=(1, )),
    mask_decoder=dict(mlp_dim=64, num_heads=2, iou_head_hidden_dim=32),
    prompt_embed_dim=32)
#: a small RetinaNet as the prompt detector (5 boxes per image)
TINY_DETECTOR = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[0, 0, 0],
                           std=[255, 255, 255], bgr_to_rgb=True,
                           pad_size_divisor=32),
    backbone=dict(type='ResNet', depth=18, base_channels=8,
                  out_indices=(1, 2, 3), init_cfg=None),
    neck=dict(type='FPN', in_channels=[16, 32, 64], out_channels=16,
              add_extra_convs='on_input', num_outs=3),
    bbox_head=dict(
        type='RetinaHead', num_classes=3, in_channels=16, stacked_convs=1,
        feat_channels=16,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                              scales_per_octave=1, ratios=[1.0],
                              strides=[8, 16, 32]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder')),
    test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.0,
                  nms=dict(type='nms', iou_threshold=0.5), max_per_img=5))
DETECTOR_PIPELINE = [dict(type='Resize', scale=(64, 64), keep_ratio=True)]
SKIP_DETECTOR = dict(name=r'detector(\..*)?', skip=True)


def tiny(seed: int = 0, **kwargs) -> BoxPromptSAM:
    torch.manual_seed(seed)
    return BoxPromptSAM(**TINY_SAM, **kwargs).eval()


def image(seed: int = 0, shape=(50, 70)) -> np.ndarray:
    """A random BGR uint8 image (as mmdet's LoadImageFromFile)."""
    return np.random.RandomState(seed).randint(0, 256, (*shape, 3),
                                               dtype=np.uint8)


def batch(img: np.ndarray, gt_boxes=None) -> dict:
    sample = DetDataSample(metainfo=dict(img_shape=img.shape[:2],
                                         ori_shape=img.shape[:2]))
    if gt_boxes is not None:
        boxes = torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.arange(len(boxes)))
    return dict(inputs=[torch.from_numpy(img).permute(2, 0, 1)],
                data_samples=[sample])


def predict(model: BoxPromptSAM, data: dict) -> InstanceData:
    with torch.no_grad():
        return model.test_step(data)[0].pred_instances


@pytest.mark.parametrize('multimask', [False, True])
def test_same_masks_as_sam_predictor(multimask):
    model = tiny(prompt='gt', multimask_output=multimask)
    img = image()
    boxes = [[5., 5., 40., 30.], [10., 20., 69., 49.], [0., 0., 70., 50.]]
    pred = predict(model, batch(img, boxes))

    predictor = SamPredictor(
        Sam(model.image_encoder, model.prompt_encoder,
            model.mask_decoder).eval())
    predictor.set_image(img[..., ::-1].copy())  # SAM reads RGB
    box_t = predictor.transform.apply_boxes_torch(torch.tensor(boxes),
                                                  img.shape[:2])
    with torch.no_grad():
        masks, iou, _ = predictor.predict_torch(
            None, None, box_t, multimask_output=multimask)
    ref = masks[torch.arange(len(boxes)), iou.argmax(dim=1)]
    assert pred.masks.shape == (3, 50, 70) and pred.masks.dtype == torch.bool
    assert 0 < ref.float().mean() < 1  # not a trivial mask
    assert torch.equal(pred.masks, ref)
    assert pred.labels.tolist() == [0, 1, 2]
    assert torch.equal(pred.bboxes, torch.tensor(boxes))


def test_boxes_clipped_and_empty_prompts():
    model = tiny(prompt='gt')
    img = image(1, (40, 60))
    pred = predict(model, batch(img, [[-10., -5., 30., 80.]]))
    assert pred.bboxes.tolist() == [[0., 0., 30., 40.]]
    inside = predict(model, batch(img, [[0., 0., 30., 40.]]))
    assert torch.equal(pred.masks, inside.masks)  # clipped before SAM
    empty = predict(model, batch(img, []))
    assert empty.masks.shape == (0, 40, 60) and empty.bboxes.shape == (0, 4)
    assert len(empty.labels) == len(empty.scores) == 0


def test_detector_prompts():
    model = tiny(detector=TINY_DETECTOR, detector_pipeline=DETECTOR_PIPELINE)
    img = image(2, (24, 32))  # the detector sees it at twice the size
    pred = predict(model, batch(img))
    det = model.detector
    assert len(pred) == 5 and pred.masks.shape == (5, 24, 32)
    # as mmdet's own test of the detector: its pipeline, then test_step
    results = Resize(scale=(64, 64), keep_ratio=True)(
        dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2]))
    packed = PackDetInputs(meta_keys=('ori_shape', 'img_shape',
                                      'scale_factor'))(results)
    with torch.no_grad():
        ref = det.test_step(dict(inputs=[packed['inputs']],
                                 data_samples=[packed['data_samples']]))
    ref = ref[0].pred_instances
    assert torch.equal(pred.bboxes, ref.bboxes)
    assert torch.equal(pred.scores, ref.scores)
    assert torch.equal(pred.labels, ref.labels)
    # max_prompts: the best boxes only
    model.max_prompts = 2
    best = predict(model, batch(img))
    top = ref.scores.argsort(descending=True)[:2]
    assert torch.equal(best.bboxes, ref.bboxes[top])
    assert torch.equal(best.masks, pred.masks[top])
    # a detector that finds nothing: an empty prediction
    det.bbox_head.test_cfg.score_thr = 2.0
    empty = predict(model, batch(img))
    assert empty.masks.shape == (0, 24, 32) and len(empty.bboxes) == 0


def test_quantized_coverage():
    """Every Linear / Conv of SAM, every attention matmul and softmax of the
    image encoder and the two-way decoder are quantized; the detector is
    skipped by name and stays FP."""
    model = tiny(detector=TINY_DETECTOR, detector_pipeline=DETECTOR_PIPELINE)
    data = [batch(image(i)) for i in range(2)]
    _, summary = quantize_model(
        model, dict(w_bits=8, a_bits=8, overrides=[SKIP_DETECTOR]), data)
    rows = {r['name']: r for r in summary}
    det_rows = [r for n, r in rows.items() if n.startswith('detector.')]
    assert det_rows and all(r['status'] == 'fp' for r in det_rows)
    assert summary.first_op == 'image_encoder.patch_embed.proj'
    weighted = [n for n, m in model.named_modules()
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d,
                                  torch.nn.ConvTranspose2d))
                and n.startswith(('image_encoder.', 'mask_decoder.',
                                  'prompt_encoder.'))]
    # the mask-input convs never run with box prompts
    unreached = {f'prompt_encoder.mask_downscaling.{i}' for i in (0, 3, 6)}
    assert {n for n in weighted if rows[n]['status'] == 'quantized'} == \
        set(weighted) - unreached
    hosts = ['image_encoder.blocks.0.attn', 'image_encoder.blocks.1.attn'] + [
        f'mask_decoder.transformer.layers.{i}.{a}' for i in range(2)
        for a in ('self_attn', 'cross_attn_token_to_image',
                  'cross_attn_image_to_token')
    ] + ['mask_decoder.transformer.final_attn_token_to_image']
    for host in hosts:
        roles = {rows[n]['kind'] for n in rows
                 if n.rsplit('.', 1)[0] == host and
                 rows[n]['status'] == 'quantized'}
        assert {'qk', 'softmax', 'av'} <= roles, host
    counts = summary.counts()
    assert counts['qk'] == counts['softmax'] == counts['av'] == \
        dict(quantized=len(hosts))


@pytest.fixture(scope='module')
def vit_b_checkpoint(tmp_path_factory):
    """A random-init segment-anything SAM ViT-B state dict: the official
    checkpoint's keys and shapes."""
    torch.manual_seed(0)
    state = build_sam_vit_b(checkpoint=None).state_dict()
    path = str(tmp_path_factory.mktemp('sam') / 'sam_vit_b.pth')
    torch.save(state, path)
    return path, state


@pytest.fixture(scope='module')
def vit_b_model():
    return BoxPromptSAM(prompt='gt', sam_variant='vit_b')


def test_official_checkpoint_keys(vit_b_checkpoint, vit_b_model):
    path, state = vit_b_checkpoint
    model = vit_b_model
    model_state = model.state_dict()
    assert {k: v.shape for k, v in model_state.items()} == \
        {k: v.shape for k, v in state.items()}
    model.load_sam_checkpoint(path)
    for key in ('image_encoder.blocks.11.attn.rel_pos_h',
                'mask_decoder.iou_prediction_head.layers.2.weight',
                'prompt_encoder.pe_layer.positional_encoding_gaussian_matrix'):
        assert torch.equal(model.state_dict()[key], state[key])


def test_checkpoint_of_another_size(tmp_path, vit_b_model):
    with torch.device('meta'):
        state = build_sam_vit_l(checkpoint=None).state_dict()
    path = str(tmp_path / 'sam_vit_l.pth')
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"1024 and depth 24.*"
                       r"sam_variant='vit_l'"):
        vit_b_model.load_sam_checkpoint(path)
    small = tiny(prompt='gt').state_dict()
    torch.save(small, path)
    with pytest.raises(ValueError, match='no official variant: set '
                       r'image_encoder=dict\(embed_dim=64, depth=2'):
        vit_b_model.load_sam_checkpoint(path)
    model = tiny(prompt='gt')
    del small['mask_decoder.iou_token.weight']
    torch.save(small, path)
    with pytest.raises(ValueError, match=r"1 missing keys \['mask_decoder"):
        model.load_sam_checkpoint(path)


def test_checkpoint_loaded_safely(tmp_path):
    """SAM's checkpoint goes through mmengine's local loader, which is
    mmptq's safe loader once installed: an unsafe global is refused."""
    path = str(tmp_path / 'evil.pth')
    torch.save(dict(tiny(prompt='gt').state_dict(), evil=pickle.Pickler),
               path)
    previous = install_safe_loader()
    try:
        with pytest.raises(UnsafeCheckpointError, match='Pickler'):
            tiny(prompt='gt', sam_checkpoint=path)
    finally:
        CheckpointLoader.register_scheme('', previous, force=True)


def test_detector_checkpoint(tmp_path):
    """A Runner checkpoint of the detector (numpy in its meta, which
    mmptq's safe loader allows) loads into ``detector`` when built, and
    ``init_weights`` (the Runner's, before training) keeps it."""
    det = tiny(detector=TINY_DETECTOR, seed=1).detector
    path = str(tmp_path / 'det.pth')
    torch.save(dict(state_dict=det.state_dict(),
                    meta=dict(epoch=np.int64(12), hist=np.zeros(3))), path)
    previous = install_safe_loader()
    try:
        model = tiny(detector=TINY_DETECTOR, detector_checkpoint=path)
    finally:
        CheckpointLoader.register_scheme('', previous, force=True)
    model.init_weights()  # as the Runner before training: kept
    for key, value in det.state_dict().items():
        assert torch.equal(model.detector.state_dict()[key], value), key


def test_bad_arguments():
    with pytest.raises(ValueError, match="prompt must be 'detector' or"):
        tiny(prompt='boxes')
    with pytest.raises(ValueError, match='needs a detector config'):
        tiny()
    with pytest.raises(ValueError, match="sam_variant must be one of"):
        BoxPromptSAM(prompt='gt', sam_variant='vit_x')


def test_coco_metric_scores_it(tmp_path):
    """Through the PTQ4SAM configs' data pipeline, the predictions are what
    mmdet's CocoMetric scores for boxes and masks (ground-truth prompts:
    box AP 1)."""
    ann_file = make_tiny_coco(str(tmp_path), num_images=3)
    base = Config.fromfile(f'{REPO_ROOT}/configs/mmdet/ptq4sam/_base_/'
                           'box-prompt-sam_coco.py')
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = CocoDataset(
            ann_file=ann_file, data_prefix=dict(img=str(tmp_path)),
            metainfo=dict(classes=('red', 'blue')), test_mode=True,
            pipeline=base.sam_test_pipeline)
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = dataset.metainfo
    model = tiny(prompt='gt')
    for i in range(len(dataset)):
        data = pseudo_collate([dataset[i]])
        with torch.no_grad():
            out = model.test_step(data)
        metric.process(data, [s.to_dict() for s in out])
    results = metric.evaluate(len(dataset))
    assert results['coco/bbox_mAP'] == 1.0
    assert 0 <= results['coco/segm_mAP'] <= 1


def test_jitter_boxes():
    """SAM's box noise: 10% of the side, at most 20 px, inside the image."""
    model = tiny(prompt='gt')
    boxes = torch.tensor([[10., 10., 30., 50.], [0., 0., 600., 600.]])
    torch.manual_seed(0)
    noisy = torch.stack([model.jitter_boxes(boxes, (1000, 1000))
                         for _ in range(2000)])
    moved = noisy - boxes
    assert moved[:, 1].abs().max() <= 20  # the cap (600 px box)
    std = moved[:, 0].std(dim=0)  # 20 x 40 px box: 2, 4, 2, 4 px
    assert torch.allclose(std, torch.tensor([2., 4., 2., 4.]), rtol=0.1)
    assert model.jitter_boxes(torch.tensor([[0., 0., 64., 40.]]),
                              (40, 64)).min() >= 0
    corner = model.jitter_boxes(torch.tensor([[50., 30., 64., 40.]]),
                                (40, 64))[0]
    assert corner[2] <= 64 and corner[3] <= 40


def test_loss_trains_sam_not_detector():
    """The loss (focal 20 : dice 1, IoU MSE) prompts SAM with jittered
    ground-truth boxes; gradients reach SAM's three parts, never the
    detector; a few steps lower it; an image without instances adds
    nothing."""
    from mmdet.structures.mask import BitmapMasks
    model = tiny(detector=TINY_DETECTOR,
                 detector_pipeline=DETECTOR_PIPELINE).train()
    data = batch(image(4, (48, 64)), [[4., 4., 30., 40.], [20., 8., 60., 30.]])
    masks = np.zeros((2, 48, 64), dtype=np.uint8)
    masks[0, 10:30, 8:24] = masks[1, 12:26, 30:55] = 1
    data['data_samples'][0].gt_instances.masks = BitmapMasks(masks, 48, 64)
    empty = batch(image(5, (48, 64)), [])
    empty['data_samples'][0].gt_instances.masks = BitmapMasks(
        np.zeros((0, 48, 64), np.uint8), 48, 64)
    inputs = data['inputs'] + empty['inputs']
    samples = data['data_samples'] + empty['data_samples']
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(8):
        torch.manual_seed(0)  # the same jitter each step
        losses = model.loss(inputs, samples)
        assert set(losses) == {'loss_focal', 'loss_dice', 'loss_iou'}
        optim.zero_grad()
        sum(losses.values()).backward()
        optim.step()
        history.append(float(sum(losses.values()).detach()))
    for part in ('image_encoder', 'prompt_encoder', 'mask_decoder'):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in getattr(model, part).parameters()), part
    assert all(p.grad is None for p in model.detector.parameters())
    assert history[-1] < history[0], history
    zero = model.loss(empty['inputs'], empty['data_samples'])
    assert all(v == 0 and v.requires_grad for v in zero.values())
