"""Reconstruction units found by structure.

A unit is a module whose quantized output is fitted to its FP output. The
rules, applied top-down (the first that holds makes the module a unit):

1. its name fully matches one of the user's ``partition`` regexes;
2. it is a *transformer block*: exactly one attention host
   (``attn_quantizer``) in its subtree and a direct child with quantized
   ops but no attention (the MLP). Its direct children that hold
   quantized ops become the units: attention and MLP sub-blocks, as
   PTQ4SAM reconstructs them; an attention host outside such a block is
   a unit of its own;
3. it is a *repeated block* without attention: an element of a
   ``Sequential`` / ``ModuleList`` with a sibling of the same class, e.g.
   ResNet's BasicBlock / Bottleneck or the ConvModules of an FPN or a head;
4. it is a quantized op itself (layer-wise unit: FPN levels, heads, a
   patch embedding or a PatchMerging reduction).

``layerwise=True`` makes every quantized op its own unit (AdaRound).
"""
import re
from typing import List, Optional, Sequence

from torch import nn

from mmptq.nn.attention import AttentionCallRouter
from mmptq.nn.modules import QuantWeightMixin
from mmptq.quantizers import BaseQuantizer


def _has(module: nn.Module, kind) -> bool:
    return any(isinstance(m, kind) for m in module.modules())


def _is_op(module: nn.Module) -> bool:
    return isinstance(module, QuantWeightMixin)


def _hosts(module: nn.Module) -> int:
    return sum(isinstance(m, AttentionCallRouter) for m in module.modules())


def _is_host(module: nn.Module) -> bool:
    return any(isinstance(m, AttentionCallRouter) for m in module.children())


def _is_transformer_block(module: nn.Module) -> bool:
    if _is_op(module) or _is_host(module) or _hosts(module) != 1:
        return False
    return any(
        _has(child, BaseQuantizer) and not _has(child, AttentionCallRouter)
        for child in module.children())


def _is_repeated(module: nn.Module, parent: Optional[nn.Module]) -> bool:
    if not isinstance(parent, (nn.Sequential, nn.ModuleList)):
        return False
    same = [m for m in parent.children() if type(m) is type(module)]
    return len(same) > 1 and not _has(module, AttentionCallRouter)


def find_units(model: nn.Module,
               partition: Optional[Sequence[str]] = None,
               layerwise: bool = False) -> List[str]:
    """Names of the reconstruction units of ``model`` (module order)."""
    patterns = [re.compile(p) for p in partition or ()]
    units: List[str] = []

    def visit(name: str, module: nn.Module,
              parent: Optional[nn.Module]) -> None:
        if not _has(module, BaseQuantizer):
            return
        if name and any(p.fullmatch(name) for p in patterns):
            units.append(name)
            return
        if not layerwise:
            if _is_transformer_block(module):
                units.extend(f'{name}.{child}' if name else child
                             for child, sub in module.named_children()
                             if _has(sub, BaseQuantizer))
                return
            if name and (_is_host(module) or _is_repeated(module, parent)):
                units.append(name)
                return
        if name and _is_op(module):
            units.append(name)
            return
        for child, sub in module.named_children():
            visit(f'{name}.{child}' if name else child, sub, module)

    visit('', model, None)
    return units
