"""Model variants derived at load time from a shipped checkpoint.

A variant is a deterministic edit of a checkpoint's state dict, registered
under a short name (``signflip``) with :func:`register_variant`. A demo
model's variant is named ``<demo>-<variant>`` (``sam-signflip``: the demo
``sam`` with ``signflip`` applied after its checkpoint is loaded); no
checkpoint file is added. Variants keep the FP function (they change what
quantization sees: signs, scales, outlier channels), so a variant's FP row
equals its base model's.
"""
import functools
import re
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

StateDict = Dict[str, Tensor]
StateVariant = Callable[[StateDict], StateDict]

#: variant name -> function of a state dict (returns a new one)
VARIANTS: Dict[str, StateVariant] = {}


def register_variant(name: str) -> Callable[[StateVariant], StateVariant]:
    """Register a state-dict variant under ``name`` (a decorator).

    Args:
        name: the variant's name (no ``-``: ``<demo>-<name>`` names a demo
            model's variant).
    """
    if '-' in name:
        raise ValueError(f'a variant name has no "-": {name!r}')

    def register(fn: StateVariant) -> StateVariant:
        if name in VARIANTS:
            raise KeyError(f'variant {name!r} is already registered')
        VARIANTS[name] = fn
        return fn

    return register


def split_variant(name: str) -> Tuple[str, Optional[str]]:
    """``'sam-signflip'`` -> ``('sam', 'signflip')``; a name whose last
    ``-`` part is no registered variant -> ``(name, None)``."""
    base, _, variant = name.rpartition('-')
    return (base, variant) if base and variant in VARIANTS else (name, None)


def apply_variant(variant: str, state: StateDict) -> StateDict:
    """The state dict of ``variant`` derived from ``state`` (unchanged).

    Args:
        variant: a registered variant name.
        state: the base model's state dict.
    """
    if variant not in VARIANTS:
        raise KeyError(f'unknown variant {variant!r}; the variants are '
                       f'{sorted(VARIANTS)}')
    return VARIANTS[variant](dict(state))


def _keys_under(state: StateDict, prefix: str, suffix: str) -> List[str]:
    """The keys ``<prefix>...<suffix>`` of ``state``, sorted; a KeyError
    naming both when there is none."""
    pattern = re.compile(re.escape(prefix) + r'(.*\.)?' + re.escape(suffix)
                         + '$')
    keys = sorted(k for k in state if pattern.match(k))
    if not keys:
        raise KeyError(f'no {suffix} under {prefix!r}')
    return keys


def _half_negative(channels: int, gen: torch.Generator) -> torch.Tensor:
    """±1 per channel, −1 on a random half (⌊channels/2⌋) of them."""
    sign = torch.ones(channels)
    sign[torch.randperm(channels, generator=gen)[:channels // 2]] = -1
    return sign


@register_variant('signflip')
def flip_qk_signs(state: StateDict, prefix: str = 'mask_decoder.',
                  seed: int = 0) -> StateDict:
    """Flip the sign of a random half of the query / key channels of each
    attention under ``prefix`` (segment-anything's ``q_proj`` / ``k_proj``
    pairs), in both projections (weight rows and bias): every product
    ``q_c k_c``, so ``Q Kᵀ`` of every head, is unchanged, while a key
    channel's distribution is mirrored (PTQ4SAM's bimodal keys).

    Args:
        state: the state dict (edited in place and returned).
        prefix: the attentions under this key prefix.
        seed: seed of the channel choice (one generator, attentions in key
            order).
    """
    gen = torch.Generator().manual_seed(seed)
    for key in _keys_under(state, prefix, 'q_proj.weight'):
        attn = key[:-len('q_proj.weight')]
        sign = _half_negative(state[key].shape[0], gen)
        for proj in ('q_proj', 'k_proj'):
            for name, view in (('weight', (-1, 1)), ('bias', (-1, ))):
                full = f'{attn}{proj}.{name}'
                if full in state:
                    state[full] = state[full] * sign.view(view).to(
                        state[full].dtype)
    return state


@register_variant('bimodal')
def shift_keys(state: StateDict, prefix: str = 'mask_decoder.',
               scale: float = 4.0, seed: int = 0) -> StateDict:
    """Make the keys of each attention under ``prefix`` bimodal per tensor
    (PTQ4SAM's situation): the ``k_proj`` bias of a random half of the
    channels gains ``+m``, of the other half ``-m``, ``m = scale`` x the
    largest row norm of ``k_proj.weight`` (a key channel's spread for
    inputs of unit scale). A constant added to every key adds ``q·δ`` to
    all logits of a query, which the softmax ignores: the FP function is
    unchanged (to float rounding).

    Args:
        state: the state dict (edited in place and returned).
        prefix: the attentions under this key prefix.
        scale: the shift in row norms of the key weight.
        seed: seed of the channel choice (attentions in key order).
    """
    gen = torch.Generator().manual_seed(seed)
    for key in _keys_under(state, prefix, 'k_proj.bias'):
        weight = state[key[:-len('bias')] + 'weight'].float()
        sign = _half_negative(len(state[key]), gen)
        shift = scale * weight.norm(dim=1).max() * sign
        state[key] = (state[key].float() + shift).to(state[key].dtype)
    return state


#: ``bimodal<scale>``: :func:`shift_keys` with the modes farther apart
#: (``sam-bimodal16``, ``sam-bimodal32``). On the demo SAM the 4-bit
#: per-tensor step of the keys (min / max, 0 in the range) is 0.7-1.2 x a
#: key channel's median standard deviation without the shift, 1.0-1.8 x at
#: ``bimodal``'s scale 4 (plain W4A4 barely notices), 2.2-3.9 x at 16 and
#: 3.8-6.6 x at 32; BIG's sign fold halves it (the folded keys lie in
#: [0, m + spread]; the range keeps 0). docs/methods/ptq4sam.md
FAR_SHIFT_SCALES: Tuple[int, ...] = (16, 32)
for _scale in FAR_SHIFT_SCALES:
    register_variant(f'bimodal{_scale}')(
        functools.partial(shift_keys, scale=float(_scale)))


#: (LayerNorm, Linear layers it alone feeds), as key suffixes of one block:
#: mmpretrain's ViT (ln1 -> attn.qkv, ln2 -> ffn), mmdet's Swin
#: (norm1 -> attn.w_msa.qkv, norm2 -> ffn), HiViT / timm (mlp.fc1) and
#: segment-anything's image encoder (mlp.lin1)
LN_LINEAR_PAIRS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ('ln1', ('attn.qkv', 'attn.w_msa.qkv')),
    ('norm1', ('attn.qkv', 'attn.w_msa.qkv')),
    ('ln2', ('ffn.layers.0.0', 'mlp.fc1', 'mlp.lin1')),
    ('norm2', ('ffn.layers.0.0', 'mlp.fc1', 'mlp.lin1')),
)


def ln_linear_pairs(state: StateDict) -> List[Tuple[str, str]]:
    """``(norm, linear)`` key prefixes (``'backbone.layers.0.ln1'``,
    ``'backbone.layers.0.attn.qkv'``) of the LayerNorms in ``state`` whose
    output feeds only that Linear (:data:`LN_LINEAR_PAIRS`), in key order.
    A pair counts when the LayerNorm has an affine weight and bias and the
    Linear a 2-D weight with as many input features."""
    pairs = []
    for key in sorted(state):
        for norm, linears in LN_LINEAR_PAIRS:
            tail = f'{norm}.weight'
            if not (key == tail or key.endswith('.' + tail)):
                continue
            block = key[:-len(tail)]
            if f'{block}{norm}.bias' not in state:
                continue
            for linear in linears:
                weight = state.get(f'{block}{linear}.weight')
                if (weight is not None and weight.dim() == 2
                        and weight.shape[1] == state[key].numel()):
                    pairs.append((block + norm, block + linear))
    return pairs


@register_variant('outlier')
def spread_ln_channels(state: StateDict, decades: float = 1.0,
                       seed: int = 0) -> StateDict:
    """Give post-LayerNorm channels a pretrained-like spread of ranges
    (RepQ-ViT's Fig. 1: a few channels far wider than the rest) without
    changing the FP function: for each LayerNorm that feeds Linear layers
    only (:func:`ln_linear_pairs`), channel ``c`` of its affine gets a
    factor ``s_c = 10^u_c``, ``u_c ~ U(-decades, decades)``,

        γ'_c = s_c γ_c,   β'_c = s_c β_c,   W'[:, c] = W[:, c] / s_c,

    so ``W' LN'(x) = W LN(x)`` (RepQ-ViT's reparameterization, Eq. 6-7,
    run backwards). Briefly trained models have nearly equal post-LN
    channel ranges, so per-tensor activation quantization loses little
    there; this variant restores the case the per-channel methods are for.

    Args:
        state: the state dict (edited in place and returned).
        decades: ``u_c`` is uniform in ``[-decades, decades]``.
        seed: seed of the factors (one generator, LayerNorms in key order).
    """
    pairs = ln_linear_pairs(state)
    if not pairs:
        raise KeyError('no LayerNorm -> Linear pairs (block keys '
                       f'{[n for n, _ in LN_LINEAR_PAIRS]} -> '
                       f'{sorted({s for _, ls in LN_LINEAR_PAIRS for s in ls})})')
    gen = torch.Generator().manual_seed(seed)
    factors: Dict[str, Tensor] = {}
    for norm, linear in pairs:
        if norm not in factors:
            channels = state[f'{norm}.weight'].numel()
            u = torch.rand(channels, generator=gen, dtype=torch.float64)
            factors[norm] = 10.0**((2 * u - 1) * decades)
            for name in ('weight', 'bias'):
                full = f'{norm}.{name}'
                state[full] = _at_least_float(
                    state[full].double() * factors[norm], state[full])
        full = f'{linear}.weight'
        state[full] = _at_least_float(state[full].double() / factors[norm],
                                      state[full])
    return state


def _at_least_float(value: Tensor, like: Tensor) -> Tensor:
    """``value`` in ``like``'s dtype, but float32 where that is narrower
    (the demo checkpoints are float16, whose rounding of the scaled
    weights would change the FP function by ~1e-3)."""
    dtype = like.dtype if like.dtype == torch.float64 else torch.float32
    return value.to(dtype)
