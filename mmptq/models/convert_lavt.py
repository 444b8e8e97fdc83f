"""Convert released LAVT checkpoints to :class:`mmptq.models.LAVT` keys.

LAVT's training script (yz93/LAVT-RIS ``train.py``) saves ``model`` (the
segmentor: ``backbone.*``, ``classifier.*``) and, for the ``lavt`` model,
``bert_model`` (the BERT beside it); a ``lavt_one`` checkpoint (the ones
PTQ4RIS quantizes) holds the BERT inside ``model`` as ``text_encoder.*``.
Both trained with the pooler removed (``--ddp_trained_weights``); a pooler
found is dropped (LAVT never uses it).

==========================================  ==================================
LAVT                                        mmptq ``LAVT``
==========================================  ==================================
``backbone.patch_embed.proj.*``             ``backbone.patch_embed.projection.*``
``backbone.layers.{i}.blocks.{j}.attn.*``   ``backbone.stages.{i}.blocks.{j}.
                                            attn.w_msa.*``
``backbone.layers.{i}.blocks.{j}.mlp.fc1``  ``....ffn.layers.0.0``
``backbone.layers.{i}.blocks.{j}.mlp.fc2``  ``....ffn.layers.1``
``backbone.layers.{i}.blocks.{j}.norm*``    ``backbone.stages.{i}.blocks.{j}.
                                            norm*``
``backbone.layers.{i}.downsample.*``        ``backbone.stages.{i}.downsample.*``
                                            (the 2x2 patch order of
                                            ``reduction`` / ``norm`` changed
                                            to ``nn.Unfold``'s)
``backbone.norm{i}.*``                      ``backbone.norm{i}.*``
``backbone.layers.{i}.fusion.*``            ``fusions.{i}.*``
``backbone.layers.{i}.res_gate.*``          ``gates.{i}.*``
``classifier.*``                            ``decoder.*``
``text_encoder.*`` / ``bert_model`` ``*``   ``text_encoder.*`` (no ``pooler``)
==========================================  ==================================

The Swin part goes through mmdet's own ``swin_converter`` (Microsoft's
Swin keys → mmdet's ``SwinTransformer``).
"""
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from mmdet.models.backbones.swin import swin_converter

from .convert_itpn import rename_key

#: (pattern on LAVT's key, replacement) for the non-Swin parts
LAVT_KEY_MAP: Tuple[Tuple[str, str], ...] = (
    (r'^backbone\.layers\.(\d+)\.fusion\.', r'fusions.\1.'),
    (r'^backbone\.layers\.(\d+)\.res_gate\.', r'gates.\1.'),
    (r'^classifier\.', 'decoder.'),
    (r'^text_encoder\.', 'text_encoder.'),
)
#: Swin keys of LAVT's backbone (handed to mmdet's swin_converter)
SWIN_KEY = re.compile(r'^backbone\.(patch_embed|layers\.\d+\.(blocks|'
                      r'downsample)|norm\d+|absolute_pos_embed)(\.|$)')
#: keys of LAVT's checkpoints that mmptq's LAVT has no use for
DROPPED_KEY = re.compile(r'^text_encoder\.(pooler\.|embeddings\.position_ids$)')


def lavt_state_dicts(
        ckpt: Any) -> Tuple[Dict[str, torch.Tensor],
                            Optional[Dict[str, torch.Tensor]]]:
    """The segmentor's and (``lavt`` model) the BERT's weights of a loaded
    LAVT checkpoint: ``(ckpt['model'], ckpt.get('bert_model'))``; a DDP
    ``module.`` prefix is removed.

    Args:
        ckpt: what ``torch.load`` returned.
    """
    if not isinstance(ckpt, Mapping) or not isinstance(
            ckpt.get('model'), Mapping):
        top = sorted(ckpt)[:8] if isinstance(ckpt, Mapping) else type(ckpt)
        raise ValueError(
            'not a LAVT checkpoint: expected a dict with a "model" state '
            f'dict (and "bert_model" for the lavt model); got {top}')

    def strip(state: Mapping) -> Dict[str, torch.Tensor]:
        return OrderedDict(
            (k[len('module.'):] if k.startswith('module.') else k, v)
            for k, v in state.items())

    bert = ckpt.get('bert_model')
    return strip(ckpt['model']), (strip(bert) if bert is not None else None)


def convert_lavt_state_dict(
        model_state: Mapping[str, torch.Tensor],
        bert_state: Optional[Mapping[str, torch.Tensor]] = None
) -> Dict[str, torch.Tensor]:
    """Rename a LAVT state dict (and the separate BERT of a ``lavt``
    checkpoint) by the table of this module.

    Args:
        model_state: the checkpoint's ``model`` entry.
        bert_state: its ``bert_model`` entry (BERT keys without prefix).

    Returns:
        The state dict of :class:`mmptq.models.LAVT`.

    Raises:
        ValueError: a key of neither part (named), or no BERT weights at
            all (neither ``text_encoder.*`` nor ``bert_model``).
    """
    out: Dict[str, torch.Tensor] = OrderedDict()
    swin: Dict[str, torch.Tensor] = OrderedDict()
    unknown = []
    texts = dict(model_state)
    if bert_state is not None:
        texts.update((f'text_encoder.{k}', v) for k, v in bert_state.items())
    for key, value in texts.items():
        if DROPPED_KEY.match(key):
            continue
        if SWIN_KEY.match(key):
            swin[key[len('backbone.'):]] = value
            continue
        new = rename_key(key, LAVT_KEY_MAP)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(
            f'{len(unknown)} key(s) of the checkpoint are not part of LAVT: '
            f'{unknown[:6]}. Expected backbone.* (Swin, fusion, res_gate), '
            'classifier.* and the BERT (text_encoder.* or bert_model).')
    if not any(k.startswith('text_encoder.') for k in out):
        raise ValueError(
            'the checkpoint has no text encoder: neither text_encoder.* keys '
            '(lavt_one) nor a "bert_model" entry (lavt)')
    out.update(swin_converter(swin))
    return out
