"""The demo SAM (configs/demo/sam-mini_mnist-det.py, PTQ4SAM's model on
mnist_det): its checkpoint, its FP masks with the demo RetinaNet's boxes,
and the sign-flipped variant's FP identity on the real model."""
import os.path as osp

import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope

from e2e_utils import REPO_ROOT
from mmptq.apis.benchmark import demo_models
from mmptq.apis.runner_setup import load_config
from mmptq.engine import load_checkpoint_file
from mmptq.models.variants import apply_variant
from mmptq.registry import MODELS

DATA = osp.join(REPO_ROOT, 'data', 'mnist_det')


@pytest.fixture(scope='module')
def demo():
    """The demo SAM's config, model (checkpoint loaded) and state dict."""
    spec, = demo_models(['sam'])
    cfg = load_config(spec.config)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model).eval()
    state = load_checkpoint_file(spec.checkpoint)['state_dict']
    model.load_state_dict(state, strict=True)
    return spec, cfg, model, state


def val_images(cfg, num):
    if not osp.isfile(osp.join(DATA, 'manifest.json')):
        pytest.fail(f'{DATA} is missing: `make test` builds it (make data)')
    from mmdet.registry import DATASETS
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    return [pseudo_collate([dataset[i]]) for i in range(num)]


def test_checkpoint_small_fp16_with_the_demo_detector(demo):
    spec, _, model, state = demo
    assert osp.getsize(spec.checkpoint) <= 10 * 2**20
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {
        torch.float16}
    detector = load_checkpoint_file(
        f'{REPO_ROOT}/checkpoints/demo/retinanet_r18-mini_fpn_mnist-det.pth'
    )['state_dict']
    assert all(torch.equal(state[f'detector.{k}'], v)
               for k, v in detector.items())


def test_masks_follow_the_digits(demo):
    """On val images the masks of the detector's confident boxes cover
    the digits' pixels (ink) and little else."""
    _, cfg, model, _ = demo
    with torch.no_grad():
        for data in val_images(cfg, 4):
            pred = model.test_step(data)[0].pred_instances
            keep = pred.scores > 0.5
            assert keep.any()
            ink = data['inputs'][0].float().mean(0) > 64
            for mask, box in zip(pred.masks[keep], pred.bboxes[keep]):
                x0, y0, x1, y1 = box.round().int().tolist()
                inside = ink[y0:y1, x0:x1]
                got = mask[y0:y1, x0:x1]
                iou = (got & inside).sum() / (got | inside).sum()
                assert iou > 0.5, float(iou)


def test_signflip_keeps_the_fp_masks(demo):
    _, cfg, model, state = demo
    data = val_images(cfg, 2)
    with torch.no_grad():
        base = [model.test_step(d)[0].pred_instances.masks for d in data]
        model.load_state_dict(apply_variant('signflip', state))
        flipped = [model.test_step(d)[0].pred_instances.masks for d in data]
        model.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(base, flipped))


@pytest.mark.parametrize('variant,scale',
                         [('bimodal', 4), ('bimodal16', 16), ('bimodal32', 32)])
def test_bimodal_keeps_the_fp_mask_logits(demo, variant, scale):
    """sam-bimodal / -bimodal16 / -bimodal32 on the trained weights: each k_proj
    bias moves by ±scale x the largest key-weight row norm (float16
    rounding: 1e-3 relative), and the mask logits stay within 1e-5 of the
    demo SAM's (a constant per query's logits; float rounding only: 1e-6
    measured at scale 16, 5e-6 at 64)."""
    _, cfg, model, state = demo
    shifted = apply_variant(variant, state)
    for key in [k for k in state if k.endswith('k_proj.bias')]:
        m = scale * state[key[:-4] + 'weight'].float().norm(dim=1).max()
        shift = (shifted[key].float() - state[key].float()).abs()
        assert torch.allclose(shift, m.expand_as(shift), rtol=1e-3)
    data = val_images(cfg, 1)[0]
    boxes = data['data_samples'][0].gt_instances.bboxes.tensor
    with torch.no_grad():
        emb = model.extract_feat(data['inputs'])[0]
        ref, _ = model._decode(emb, boxes)
        model.load_state_dict(shifted)
        out, _ = model._decode(emb, boxes)
        model.load_state_dict(state)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
