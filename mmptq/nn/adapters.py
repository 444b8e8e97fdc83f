"""Adapters: explicit re-implementations of modules whose computation is
hidden from module wrapping and attention capture. This is the one place
for them; ``ADAPTERS`` maps a module class to a converter."""
from typing import Callable, Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadAttentionAdapter(nn.Module):
    """``nn.MultiheadAttention`` with its packed input projection split into
    three ``nn.Linear`` (q, k, v) and the attention computed explicitly
    (matmul → softmax → matmul), so that the projections are wrapped as
    Linear layers and the attention is captured like any other.

    Same results as ``nn.MultiheadAttention`` (eval) for the arguments it
    takes; ``add_bias_kv`` / ``add_zero_attn`` are not supported."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise NotImplementedError(
                'add_bias_kv / add_zero_attn are not supported')
        e, kd, vd = mha.embed_dim, mha.kdim, mha.vdim
        self.embed_dim, self.num_heads = e, mha.num_heads
        self.head_dim = e // mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        has_bias = mha.in_proj_bias is not None
        self.q_proj = nn.Linear(e, e, bias=has_bias)
        self.k_proj = nn.Linear(kd, e, bias=has_bias)
        self.v_proj = nn.Linear(vd, e, bias=has_bias)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = (mha.q_proj_weight, mha.k_proj_weight,
                              mha.v_proj_weight)
            for proj, w in zip((self.q_proj, self.k_proj, self.v_proj),
                               (wq, wk, wv)):
                proj.weight.copy_(w)
            if has_bias:
                for proj, b in zip((self.q_proj, self.k_proj, self.v_proj),
                                   mha.in_proj_bias.chunk(3)):
                    proj.bias.copy_(b)
        self.out_proj = mha.out_proj
        self.to(mha.out_proj.weight.device)

    def forward(self,
                query: Tensor,
                key: Tensor,
                value: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True,
                attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1)
                                 for t in (query, key, value))
        L, B, _ = query.shape
        S = key.shape[0]
        h, d = self.num_heads, self.head_dim

        def heads(x: Tensor, n: int) -> Tensor:  # (n, B, E) → (B, h, n, d)
            return x.reshape(n, B, h, d).permute(1, 2, 0, 3)

        q = heads(self.q_proj(query), L) * d**-0.5
        k = heads(self.k_proj(key), S)
        v = heads(self.v_proj(value), S)
        attn = torch.matmul(q, k.transpose(-2, -1))  # (B, h, L, S)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(L, S, dtype=torch.bool,
                                   device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask.reshape(-1, h, L, S) if attn_mask.dim() == 3 \
                else attn_mask
            attn = attn.masked_fill(mask, float('-inf')) \
                if mask.dtype == torch.bool else attn + mask
        if key_padding_mask is not None:
            pad = key_padding_mask.reshape(B, 1, 1, S)
            attn = attn.masked_fill(pad, float('-inf')) \
                if pad.dtype == torch.bool else attn + pad
        attn = F.softmax(attn, dim=-1)
        weights = attn
        attn = F.dropout(attn, self.dropout, training=self.training)
        out = torch.matmul(attn, v)  # (B, h, L, d)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, B, -1))
        if not batched:
            out, weights = out.squeeze(1), weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=-3) if average_attn_weights else weights


#: module class → converter returning the module to put in its place
ADAPTERS: Dict[Type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    nn.MultiheadAttention: MultiheadAttentionAdapter,
}


def apply_adapters(model: nn.Module) -> Dict[str, str]:
    """Replace every module whose exact class has an adapter; returns
    {module name: adapter class name}."""
    done = {}
    for name, mod in list(model.named_modules()):
        convert = ADAPTERS.get(type(mod))
        if convert is None or not name:
            continue
        parent_name, _, attr = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, convert(mod))
        done[name] = convert.__name__
    return done
