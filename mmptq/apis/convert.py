"""Convert a released checkpoint to the key names of mmptq's configs
(the workflow of ``tools/convert_itpn.py`` and ``tools/convert_lavt.py``)."""
import os
import os.path as osp
from typing import Any, Callable, Dict, Optional

import torch
from mmengine.logging import print_log

from mmptq.engine import load_checkpoint_file
from mmptq.models.convert_itpn import (check_state_dict,
                                       convert_itpn_state_dict,
                                       unwrap_state_dict)
from mmptq.models.convert_lavt import (convert_lavt_state_dict,
                                       lavt_state_dicts)
from .analyze import build_random_model

StateConverter = Callable[[Any], Dict[str, torch.Tensor]]


def convert_checkpoint(src: str, dst: str, convert: StateConverter,
                       converter: str, config: Optional[str] = None,
                       unsafe: bool = False) -> Dict[str, Any]:
    """Load the checkpoint file ``src`` safely, map it with ``convert``
    (loaded object -> state dict) and save it to ``dst`` as an mmengine
    checkpoint (``state_dict`` + ``meta``).

    With ``config``, the model of that config is built and the converted
    weights are loaded into it strictly first, so a wrong size fails here
    with the keys and shapes that differ. Returns a summary: tensors,
    parameters, dst.

    Args:
        src: the released checkpoint.
        dst: where to write the converted one.
        convert: the key map of the release.
        converter: the public function's name, recorded in ``meta``.
        config: check against this config's model.
        unsafe: load ``src`` with ``weights_only=False``.
    """
    state = convert(load_checkpoint_file(src, unsafe=unsafe))
    if config is not None:
        try:
            check_state_dict(state, build_random_model(config)[0])
        except ValueError as e:
            raise ValueError(f'{config}: {e}') from None
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(state_dict=state,
                    meta=dict(converted_from=osp.basename(src),
                              converter=f'mmptq.apis.{converter}')),
               dst)
    summary = dict(tensors=len(state),
                   params=sum(v.numel() for v in state.values()), dst=dst)
    print_log(f'converted {src}: {summary["tensors"]} tensors, '
              f'{summary["params"] / 1e6:.2f} M values -> {dst}',
              logger='current')
    return summary


def convert_itpn_checkpoint(src: str,
                            dst: str,
                            config: Optional[str] = None,
                            unsafe: bool = False) -> Dict[str, Any]:
    """Convert the iTPN checkpoint file ``src`` to ``dst`` (see
    :func:`convert_checkpoint`; ``config`` e.g. the iTPN-B config, so that
    iTPN-L weights fail with the keys and shapes that differ)."""
    return convert_checkpoint(
        src, dst, lambda ckpt: convert_itpn_state_dict(
            unwrap_state_dict(ckpt)),
        'convert_itpn_checkpoint', config, unsafe)


def convert_lavt_checkpoint(src: str,
                            dst: str,
                            config: Optional[str] = None,
                            unsafe: bool = False) -> Dict[str, Any]:
    """Convert the LAVT checkpoint file ``src`` (``lavt_one``, or ``lavt``
    with its ``bert_model``) to ``dst``, the BERT weights included
    (``text_encoder.*``; see :func:`convert_checkpoint`)."""
    return convert_checkpoint(
        src, dst, lambda ckpt: convert_lavt_state_dict(
            *lavt_state_dicts(ckpt)),
        'convert_lavt_checkpoint', config, unsafe)
