"""SAM prompted by a detector's boxes, as an mmdet detector (PTQ4SAM's
evaluation: COCO instance segmentation with box prompts).

A prompt detector (any mmdet detector) finds boxes, labels and scores;
Segment Anything (the ``segment-anything`` package's image encoder, prompt
encoder and mask decoder) turns each box into a mask. The prediction is an
ordinary ``DetDataSample``, so ``CocoMetric`` scores boxes and masks.

SAM's modules are attributes of the model under their official names
(``image_encoder``, ``prompt_encoder``, ``mask_decoder``), so an official
checkpoint (``sam_vit_b_01ec64.pth``...) loads with its own keys.
"""
import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmdet.models.detectors import BaseDetector
from mmdet.models.losses.dice_loss import dice_loss
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.registry import TRANSFORMS
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint
from mmengine.structures import InstanceData
from segment_anything.modeling import (ImageEncoderViT, MaskDecoder,
                                       PromptEncoder, Sam, TwoWayTransformer)
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor, nn
from torch.nn import functional as F

from mmptq.registry import MODELS

#: the official SAM image encoders (``segment_anything.build_sam``)
SAM_VARIANTS: Dict[str, dict] = dict(
    vit_b=dict(embed_dim=768, depth=12, num_heads=12,
               global_attn_indexes=(2, 5, 8, 11)),
    vit_l=dict(embed_dim=1024, depth=24, num_heads=16,
               global_attn_indexes=(5, 11, 17, 23)),
    vit_h=dict(embed_dim=1280, depth=32, num_heads=16,
               global_attn_indexes=(7, 15, 23, 31)),
)
#: the rest of ``build_sam``'s image encoder settings
ENCODER_DEFAULTS = dict(img_size=1024, patch_size=16, mlp_ratio=4,
                        qkv_bias=True, use_rel_pos=True, window_size=14)
#: ``build_sam``'s two-way transformer and mask decoder settings
DECODER_DEFAULTS = dict(depth=2, mlp_dim=2048, num_heads=8,
                        num_multimask_outputs=3, iou_head_depth=3,
                        iou_head_hidden_dim=256)
SAM_PREFIXES = ('image_encoder.', 'prompt_encoder.', 'mask_decoder.')
#: the image-to-detector-input transforms end in this packing
DETECTOR_META_KEYS = ('ori_shape', 'img_shape', 'pad_shape', 'scale_factor')
#: SAM's training loss: focal : dice = 20 : 1, IoU prediction's MSE 1
LOSS_WEIGHTS = dict(focal=20.0, dice=1.0, iou=1.0)


def sam_encoder_dims(state: Dict[str, Tensor]) -> Tuple[int, int]:
    """(embed dim, depth) of the SAM image encoder in ``state``."""
    embed = state['image_encoder.patch_embed.proj.weight'].shape[0]
    blocks = {int(m.group(1)) for k in state
              for m in [re.match(r'image_encoder\.blocks\.(\d+)\.', k)] if m}
    return embed, len(blocks)


def sam_variant_of(embed_dim: int, depth: int) -> Optional[str]:
    """The official variant with this encoder width and depth, or None."""
    return next((name for name, v in SAM_VARIANTS.items()
                 if (v['embed_dim'], v['depth']) == (embed_dim, depth)),
                None)


@MODELS.register_module()
class BoxPromptSAM(BaseDetector):
    """Segment Anything prompted by boxes: ``dict(type='mmptq.BoxPromptSAM')``.

    Per image, as ``SamPredictor``: the image is resized to longest side
    ``img_size`` (``ResizeLongestSide``: PIL bilinear), normalised and padded
    (``Sam.preprocess``); the boxes (clipped to the image) are mapped the
    same way; the low-resolution masks are upscaled, un-padded and resized to
    the original image (``Sam.postprocess_masks``) and thresholded. The
    image encoder runs first (so it holds quantization's ``first_op``), once
    per batch; the prompt encoder and mask decoder once per image that has
    boxes (calibrate with ``batch_size=1``: each decoder op then runs once
    per forward, and the first calibration image must have boxes for the
    discovery forward to see the decoder). An image without boxes gets an
    empty prediction.

    Training (``loss``) prompts SAM with jittered ground-truth boxes and
    never runs the detector: its weights get no gradient.

    The data pipeline passes the original image (``LoadImageFromFile``, no
    resize; BGR uint8, ``(C, H, W)``): the detector gets it through
    ``detector_pipeline`` (its own test-time resize / pad, mmdet
    transforms) and its own ``data_preprocessor``, and predicts boxes at
    the original scale.

    The detector is the submodule ``detector``. It stays FP only if
    quantization is told so: add ``dict(name=r'detector(\\..*)?', skip=True)``
    to ``quant_cfg.overrides`` (the PTQ4SAM configs do). Its checkpoint and
    SAM's are loaded when the model is built, through mmengine's checkpoint
    loader of local files (mmptq's safe loader where it is installed).

    Args:
        detector: the prompt detector's model config (mmdet scope); None
            with ``prompt='gt'``.
        detector_checkpoint: its checkpoint file.
        detector_pipeline: mmdet transforms from the original image to the
            detector's input (e.g. ``[dict(type='Resize', scale=(1333,
            800), keep_ratio=True)]``); empty: the image as is.
        prompt: ``'detector'`` or ``'gt'`` (the ground-truth boxes of each
            data sample; labels kept, scores 1).
        max_prompts: keep the highest-scoring boxes of each image, at most
            this many (None: all).
        sam_variant: ``'vit_b'``, ``'vit_l'`` or ``'vit_h'``.
        sam_checkpoint: an official SAM checkpoint (a plain state dict with
            ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``);
            one of another size is an error naming the variant it fits.
        image_encoder: ``ImageEncoderViT`` arguments over the variant's.
        mask_decoder: ``depth``, ``mlp_dim``, ``num_heads`` of the two-way
            transformer and ``num_multimask_outputs``, ``iou_head_depth``,
            ``iou_head_hidden_dim`` of the decoder, over ``build_sam``'s.
        prompt_embed_dim: width of prompts, decoder and encoder output.
        multimask_output: predict SAM's three masks per box and keep the one
            with the highest predicted IoU (False: the single mask).
        mask_threshold: logit threshold of the masks.
        box_noise: training prompt noise, a fraction of the box side
            (``jitter_boxes``).
        box_noise_max: its cap in pixels of SAM's input frame.
        bgr_to_rgb: the inputs are BGR (mmdet's loading); SAM reads RGB.
        pixel_mean: SAM's normalisation (RGB, 0-255).
        pixel_std: SAM's normalisation (RGB, 0-255).
        data_preprocessor: default ``BaseDataPreprocessor``: the images
            reach the model unchanged (a list; no stacking, no padding).
        init_cfg: unused (the checkpoints above load at build time).
    """

    def __init__(self,
                 detector: Optional[dict] = None,
                 detector_checkpoint: Optional[str] = None,
                 detector_pipeline: Sequence[dict] = (),
                 prompt: str = 'detector',
                 max_prompts: Optional[int] = None,
                 sam_variant: str = 'vit_b',
                 sam_checkpoint: Optional[str] = None,
                 image_encoder: Optional[dict] = None,
                 mask_decoder: Optional[dict] = None,
                 prompt_embed_dim: int = 256,
                 multimask_output: bool = False,
                 mask_threshold: float = 0.0,
                 box_noise: float = 0.1,
                 box_noise_max: float = 20.0,
                 bgr_to_rgb: bool = True,
                 pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
                 pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            data_preprocessor=data_preprocessor or dict(
                type='BaseDataPreprocessor'),
            init_cfg=init_cfg)
        if prompt not in ('detector', 'gt'):
            raise ValueError(f"prompt must be 'detector' or 'gt', got "
                             f'{prompt!r}')
        if prompt == 'detector' and detector is None:
            raise ValueError("prompt='detector' needs a detector config")
        if sam_variant not in SAM_VARIANTS:
            raise ValueError(f'sam_variant must be one of '
                             f'{sorted(SAM_VARIANTS)}, got {sam_variant!r}')
        self.prompt = prompt
        self.max_prompts = max_prompts
        self.sam_variant = sam_variant
        self.multimask_output = multimask_output
        self.mask_threshold = mask_threshold
        self.box_noise = box_noise
        self.box_noise_max = box_noise_max
        self.bgr_to_rgb = bgr_to_rgb
        self._build_sam(sam_variant, image_encoder or {}, mask_decoder or {},
                        prompt_embed_dim)
        # buffers named as Sam's and, as there, not in the state dict
        self.register_buffer('pixel_mean',
                             torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer('pixel_std',
                             torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.transform = ResizeLongestSide(self.image_encoder.img_size)
        self.detector = None
        if detector is not None:
            with DefaultScope.overwrite_default_scope('mmdet'):
                self.detector = MMDET_MODELS.build(ConfigDict(detector))
                self.detector_pipeline = Compose(
                    [TRANSFORMS.build(t) for t in detector_pipeline] +
                    [TRANSFORMS.build(dict(type='PackDetInputs',
                                           meta_keys=DETECTOR_META_KEYS))])
            if detector_checkpoint:
                load_checkpoint(self.detector, detector_checkpoint,
                                map_location='cpu', strict=True)
                # the Runner's init_weights (training) must not re-init it
                self.detector._is_init = True
        if sam_checkpoint:
            self.load_sam_checkpoint(sam_checkpoint)

    def _build_sam(self, variant: str, encoder: dict, decoder: dict,
                   embed_dim: int) -> None:
        enc = {**ENCODER_DEFAULTS, **SAM_VARIANTS[variant], **encoder}
        self.image_encoder = ImageEncoderViT(
            norm_layer=partial(nn.LayerNorm, eps=1e-6), out_chans=embed_dim,
            **enc)
        size = enc['img_size'] // enc['patch_size']
        self.prompt_encoder = PromptEncoder(
            embed_dim=embed_dim, image_embedding_size=(size, size),
            input_image_size=(enc['img_size'], enc['img_size']),
            mask_in_chans=16)
        dec = dict(DECODER_DEFAULTS, **decoder)
        self.mask_decoder = MaskDecoder(
            transformer=TwoWayTransformer(
                depth=dec['depth'], embedding_dim=embed_dim,
                mlp_dim=dec['mlp_dim'], num_heads=dec['num_heads']),
            transformer_dim=embed_dim,
            num_multimask_outputs=dec['num_multimask_outputs'],
            iou_head_depth=dec['iou_head_depth'],
            iou_head_hidden_dim=dec['iou_head_hidden_dim'])

    def load_sam_checkpoint(self, path: str) -> None:
        """Load an official SAM checkpoint (keys and shapes must be exactly
        SAM's: another SAM size is named; any other difference is listed).

        Args:
            path: the checkpoint file.
        """
        state = CheckpointLoader.load_checkpoint(path, map_location='cpu')
        state = state.get('state_dict', state)
        model_state = {k: v for k, v in self.state_dict().items()
                       if k.startswith(SAM_PREFIXES)}
        if 'image_encoder.patch_embed.proj.weight' in state:
            found = sam_encoder_dims(state)
            wanted = sam_encoder_dims(model_state)
            if found != wanted:
                fits = sam_variant_of(*found)
                hint = (f"sam_variant='{fits}'" if fits else
                        'no official variant: set image_encoder='
                        f'dict(embed_dim={found[0]}, depth={found[1]}, ...)')
                raise ValueError(
                    f'{path} holds a SAM image encoder of embed dim '
                    f'{found[0]} and depth {found[1]}; this model has '
                    f'{wanted[0]} and {wanted[1]} ({self.sam_variant}). Use '
                    f'{hint}')
        missing = sorted(set(model_state) - set(state))
        unexpected = sorted(set(state) - set(model_state))
        shapes = [f'{k}: checkpoint {tuple(state[k].shape)}, model '
                  f'{tuple(v.shape)}' for k, v in model_state.items()
                  if k in state and state[k].shape != v.shape]
        if missing or unexpected or shapes:
            raise ValueError(
                f'{path} is not a SAM checkpoint of this model: '
                f'{len(missing)} missing keys {missing[:3]}, '
                f'{len(unexpected)} unexpected keys {unexpected[:3]}, '
                f'{len(shapes)} tensors of another shape {shapes[:3]}')
        self.load_state_dict(state, strict=False)

    # ------------------------------------------------------------ prompts
    def _detect(self, images: List[Tensor]) -> List[InstanceData]:
        """The detector's predictions at the original image scale."""
        packed = [
            self.detector_pipeline(
                dict(img=img.permute(1, 2, 0).cpu().numpy(),
                     img_shape=tuple(img.shape[1:]),
                     ori_shape=tuple(img.shape[1:]))) for img in images
        ]
        data = self.detector.data_preprocessor(
            dict(inputs=[p['inputs'] for p in packed],
                 data_samples=[p['data_samples'] for p in packed]), False)
        results = self.detector.predict(data['inputs'], data['data_samples'],
                                         rescale=True)
        return [r.pred_instances for r in results]

    def _prompts(self, images: List[Tensor],
                 data_samples: List[DetDataSample]) -> List[InstanceData]:
        if self.prompt == 'detector':
            found = self._detect(images)
            if self.max_prompts is None:
                return found
            return [p[p.scores.argsort(descending=True)[:self.max_prompts]]
                    for p in found]
        out = []
        for sample in data_samples:
            gt = sample.gt_instances
            bboxes = gt.bboxes
            bboxes = getattr(bboxes, 'tensor', bboxes)  # mmdet box types
            out.append(InstanceData(
                bboxes=bboxes.float(), labels=gt.labels,
                scores=bboxes.new_ones(len(bboxes))))
        return out

    # ---------------------------------------------------------------- SAM
    def _sam_input(self, img: Tensor) -> Tensor:
        """One ``(C, H, W)`` image as ``SamPredictor.set_image`` feeds the
        encoder: RGB, ``ResizeLongestSide`` (PIL, uint8), then
        ``Sam.preprocess`` (normalise, pad); ``(1, 3, S, S)``."""
        arr = img.permute(1, 2, 0).to(torch.uint8).cpu().numpy()
        if self.bgr_to_rgb:
            arr = arr[..., ::-1]
        resized = torch.as_tensor(np.ascontiguousarray(
            self.transform.apply_image(arr)), device=self.pixel_mean.device)
        return Sam.preprocess(self, resized.permute(2, 0, 1)[None])

    def extract_feat(self, batch_inputs: List[Tensor]) -> Tensor:
        """SAM image embeddings ``(B, C, h, w)`` of the original images."""
        return self.image_encoder(
            torch.cat([self._sam_input(img) for img in batch_inputs]))

    def _decode(self, embedding: Tensor,
                boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """Low-resolution mask logits ``(N, 1, h, w)`` and predicted IoUs
        ``(N, )`` for ``boxes`` in SAM's input frame (the mask of the
        highest predicted IoU with ``multimask_output``)."""
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes,
                                            masks=None)
        low_res, iou = self.mask_decoder(
            image_embeddings=embedding[None],
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask_output)
        best = torch.arange(len(iou)), iou.argmax(dim=1)
        return low_res[best][:, None], iou[best]

    def _masks(self, embedding: Tensor, bboxes: Tensor,
               input_size: Tuple[int, int],
               ori_size: Tuple[int, int]) -> Tensor:
        """Boolean masks ``(N, H, W)`` for ``bboxes`` in original pixels."""
        boxes = self.transform.apply_boxes_torch(bboxes, ori_size)
        low_res, _ = self._decode(embedding, boxes)
        masks = Sam.postprocess_masks(self, low_res, input_size, ori_size)
        return masks[:, 0] > self.mask_threshold

    def predict(self,
                batch_inputs: List[Tensor],
                batch_data_samples: List[DetDataSample],
                rescale: bool = True) -> List[DetDataSample]:
        """Boxes from the prompt, masks from SAM, at the original size.

        Args:
            batch_inputs: the original images, ``(C, H, W)`` each.
            batch_data_samples: their data samples (``gt_instances`` for
                ``prompt='gt'``).
            rescale: unused: predictions are always at the original size.

        Returns:
            The data samples with ``pred_instances`` (``bboxes``, ``labels``,
            ``scores``, ``masks``).
        """
        # the encoder first: it is the first op quantization sees
        embeddings = self.extract_feat(batch_inputs)
        prompts = self._prompts(batch_inputs, batch_data_samples)
        for img, emb, prompt, sample in zip(batch_inputs, embeddings,
                                            prompts, batch_data_samples):
            h, w = img.shape[1:]
            bboxes = prompt.bboxes.clone()
            bboxes[:, 0::2] = bboxes[:, 0::2].clamp(0, w)
            bboxes[:, 1::2] = bboxes[:, 1::2].clamp(0, h)
            if len(bboxes):
                input_size = ResizeLongestSide.get_preprocess_shape(
                    h, w, self.image_encoder.img_size)
                masks = self._masks(emb, bboxes, input_size, (h, w))
            else:
                masks = torch.zeros((0, h, w), dtype=torch.bool,
                                    device=img.device)
            sample.pred_instances = InstanceData(
                bboxes=bboxes, labels=prompt.labels, scores=prompt.scores,
                masks=masks)
        return batch_data_samples

    def _forward(self, batch_inputs: List[Tensor],
                 batch_data_samples: Optional[List[DetDataSample]] = None
                 ) -> Tensor:
        """The SAM image embeddings (no prompts needed)."""
        return self.extract_feat(batch_inputs)

    def jitter_boxes(self, boxes: Tensor,
                     input_size: Tuple[int, int]) -> Tensor:
        """SAM's training noise on box prompts (Kirillov et al. 2023,
        App. A): each coordinate moves by a normal sample of standard
        deviation ``box_noise`` x the box side, clipped to
        ``box_noise_max`` pixels of SAM's input frame; then clipped to the
        image (``input_size``: its resized size there).

        Args:
            boxes: ``(N, 4)`` xyxy boxes in SAM's input frame.
            input_size: ``(h, w)`` of the resized image.
        """
        side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        noise = torch.randn_like(boxes) * self.box_noise * side
        boxes = boxes + noise.clamp(-self.box_noise_max, self.box_noise_max)
        h, w = input_size
        return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                            boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)],
                           dim=1)

    def loss(self, batch_inputs: List[Tensor],
             batch_data_samples: List[DetDataSample]) -> Dict[str, Tensor]:
        """SAM's training loss with jittered ground-truth boxes as prompts.

        Each instance's box (``jitter_boxes``) prompts SAM; its mask logits,
        upscaled to SAM's padded input, are compared with the instance mask
        (``gt_instances.masks``, resized and padded the same way) by focal
        and dice losses weighted 20:1, and the predicted IoU with the mask's
        actual IoU by a mean squared error, as SAM's training (one mask per
        box: no multimask minimum). The prompt detector is not used.

        Args:
            batch_inputs: the original images, ``(C, H, W)`` each.
            batch_data_samples: their data samples, with ``gt_instances``
                (``bboxes``, ``masks``).

        Returns:
            ``loss_focal``, ``loss_dice`` and ``loss_iou``.
        """
        embeddings = self.extract_feat(batch_inputs)
        size = self.image_encoder.img_size
        logits, ious, targets = [], [], []
        for img, emb, sample in zip(batch_inputs, embeddings,
                                    batch_data_samples):
            gt = sample.gt_instances
            if not len(gt):
                continue
            h, w = img.shape[1:]
            input_size = ResizeLongestSide.get_preprocess_shape(h, w, size)
            bboxes = getattr(gt.bboxes, 'tensor', gt.bboxes).float()
            boxes = self.jitter_boxes(
                self.transform.apply_boxes_torch(bboxes, (h, w)), input_size)
            low_res, iou = self._decode(emb, boxes)
            logits.append(F.interpolate(low_res, (size, size),
                                        mode='bilinear',
                                        align_corners=False)[:, 0])
            ious.append(iou)
            targets.append(gt.masks.resize(input_size).pad(
                (size, size)).to_tensor(torch.float32, img.device))
        if not logits:  # no instance in the batch: zero, with gradients
            zero = embeddings.sum() * 0
            return dict(loss_focal=zero, loss_dice=zero, loss_iou=zero)
        logits, ious = torch.cat(logits), torch.cat(ious)
        targets = torch.cat(targets)
        pred = logits > 0
        union = (pred | targets.bool()).flatten(1).sum(1).clamp(min=1)
        true_iou = (pred & targets.bool()).flatten(1).sum(1) / union
        return dict(
            loss_focal=LOSS_WEIGHTS['focal'] * py_sigmoid_focal_loss(
                logits.flatten(1), targets.flatten(1)),
            loss_dice=LOSS_WEIGHTS['dice'] * dice_loss(
                logits.sigmoid(), targets, naive_dice=True, eps=1.0),
            loss_iou=LOSS_WEIGHTS['iou'] * F.mse_loss(ious, true_iou))
