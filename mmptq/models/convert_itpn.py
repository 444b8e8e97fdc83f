"""Convert released iTPN classifier checkpoints to mmpretrain key names.

The official iTPN fine-tuned classifiers (sunsmarterjie/iTPN, timm-style
``iTPN`` with ``fc_norm`` and ``head``) and PTQ-for-iTPN's checkpoints (the
same model) load into ``configs/mmpretrain/itpn/`` once their keys are
renamed for :class:`mmptq.models.iTPNFinetuneHiViT` + ``LinearClsHead``:

=============================  =====================================
official                       mmpretrain / mmptq
=============================  =====================================
``absolute_pos_embed``         ``backbone.pos_embed``
``patch_embed.*``              ``backbone.patch_embed.*``
``blocks.{i}.*``               ``backbone.blocks.{i}.*`` (same ``i``)
``fc_norm.*``                  ``backbone.fc_norm.*``
``head.weight`` / ``.bias``    ``head.fc.weight`` / ``.bias``
``relative_position_index``    ``backbone.relative_position_index``
                               and, as mmpretrain keeps one per
                               attention, ``backbone.blocks.{i}.attn.
                               relative_position_index``
=============================  =====================================
"""
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

#: (pattern on the official key, replacement); the first match wins
ITPN_KEY_MAP: Tuple[Tuple[str, str], ...] = (
    (r'^absolute_pos_embed$', 'backbone.pos_embed'),
    (r'^(patch_embed|blocks|fc_norm)\.', r'backbone.\1.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
    (r'^relative_position_index$', 'backbone.relative_position_index'),
)


def unwrap_state_dict(ckpt: Any) -> Dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: its ``model`` (timm / DeiT-style
    training scripts), ``state_dict`` (mmengine) or ``module`` entry, or the
    dict itself; a DDP ``module.`` prefix is removed."""
    if not isinstance(ckpt, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(ckpt)}')
    for key in ('model', 'state_dict', 'module'):
        if isinstance(ckpt.get(key), Mapping):
            ckpt = ckpt[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(
            'the checkpoint holds no state dict: none of its "model", '
            '"state_dict" or "module" entries maps names to tensors '
            f'(top-level keys: {sorted(ckpt)[:8]})')
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k,
                        v) for k, v in ckpt.items())


def rename_key(key: str,
               key_map: Sequence[Tuple[str, str]]) -> Optional[str]:
    """``key`` renamed by the first ``(pattern, replacement)`` of
    ``key_map`` whose pattern matches its start (``re.match``); None if
    none does."""
    for pattern, repl in key_map:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def convert_itpn_state_dict(
        state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an official iTPN classifier state dict by
    :data:`ITPN_KEY_MAP`. A key that neither maps nor is a known buffer is
    a ValueError that names it: the file is not an iTPN classifier (an
    iTPN pre-training checkpoint has decoder / FPN keys, for instance)."""
    out: Dict[str, torch.Tensor] = OrderedDict()
    unknown: List[str] = []
    for key, value in state.items():
        new = rename_key(key, ITPN_KEY_MAP)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(
            f'{len(unknown)} key(s) of the checkpoint are not part of an '
            f'iTPN classifier: {unknown[:6]}. Expected the fine-tuned '
            'classifier (absolute_pos_embed, patch_embed, blocks, fc_norm, '
            'head), not a pre-training checkpoint.')
    index = out.get('backbone.relative_position_index')
    if index is not None:
        for key in list(out):
            block = re.match(r'^(backbone\.blocks\.\d+\.attn)\.qkv\.weight$',
                             key)
            if block:
                out[f'{block.group(1)}.relative_position_index'] = index
    return out


def check_state_dict(state: Mapping[str, torch.Tensor],
                     model: nn.Module) -> None:
    """Load ``state`` strictly into ``model``; a mismatch is a ValueError
    listing the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}'
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        hint = ('The checkpoint has layer scale (gamma_1 / gamma_2): set '
                'model.backbone.layer_scale_init_value > 0.'
                if any('.gamma_' in k for k in unexpected) else
                'Use the config of the same model size (iTPN-B: '
                'itpn-pixel_hivit-base-p16_in1k.py, iTPN-L: '
                'itpn-pixel_hivit-large-p16_in1k.py).')
        raise ValueError(
            f'the converted checkpoint does not match the model of the '
            f'config: missing {missing[:5]}, unexpected {unexpected[:5]}, '
            f'shape mismatch {shapes[:5]}. {hint}')
    model.load_state_dict(state, strict=True)
