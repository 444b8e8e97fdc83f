"""Convert a released checkpoint to the key names of mmptq's configs
(the workflow of ``tools/convert_itpn.py``)."""
import os
import os.path as osp
from typing import Any, Dict, Optional

import torch
from mmengine.logging import print_log

from mmptq.engine import load_checkpoint_file
from mmptq.models.convert_itpn import (check_state_dict,
                                       convert_itpn_state_dict,
                                       unwrap_state_dict)
from .analyze import build_random_model


def convert_itpn_checkpoint(src: str,
                            dst: str,
                            config: Optional[str] = None,
                            unsafe: bool = False) -> Dict[str, Any]:
    """Convert the iTPN checkpoint file ``src`` and save it to ``dst`` as
    an mmengine checkpoint (``state_dict`` + ``meta``).

    With ``config``, the model of that config is built and the converted
    weights are loaded into it strictly first, so a wrong size (iTPN-L
    weights for the iTPN-B config) fails here with the keys and shapes
    that differ. Returns a summary: tensors, parameters, dst.
    """
    state = convert_itpn_state_dict(
        unwrap_state_dict(load_checkpoint_file(src, unsafe=unsafe)))
    if config is not None:
        try:
            check_state_dict(state, build_random_model(config)[0])
        except ValueError as e:
            raise ValueError(f'{config}: {e}') from None
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(state_dict=state,
                    meta=dict(converted_from=osp.basename(src),
                              converter='mmptq.apis.convert_itpn_checkpoint')),
               dst)
    summary = dict(tensors=len(state),
                   params=sum(v.numel() for v in state.values()), dst=dst)
    print_log(f'converted {src}: {summary["tensors"]} tensors, '
              f'{summary["params"] / 1e6:.2f} M values -> {dst}',
              logger='current')
    return summary
