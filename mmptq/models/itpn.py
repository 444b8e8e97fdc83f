"""The classifier of iTPN's ImageNet fine-tuning, on mmpretrain's HiViT.

iTPN (Tian et al., CVPR 2023) fine-tunes a HiViT whose two early stages hold
3 and 3 MLP-only blocks (iTPN-B; 2 and 2 for iTPN-L), then
classifies ``head(LN(mean_tokens(x)))``. mmpretrain's ``HiViT`` builds
``2 * depth`` MLP blocks per early stage (an odd count cannot be expressed)
and has no LayerNorm after the pooling, so the released iTPN classifiers do
not load into it. :class:`iTPNFinetuneHiViT` is that HiViT; its checkpoint
keys are mmpretrain's, and :func:`mmptq.apis.convert_itpn_checkpoint` maps the
official (and PTQ-for-iTPN's) key names onto them.
"""
from typing import Tuple

import torch
from mmpretrain.models.backbones.hivit import BlockWithRPE, HiViT, PatchMerge
from mmpretrain.models.utils import build_norm_layer
from torch import nn

from mmptq.registry import MODELS


@MODELS.register_module()
class iTPNFinetuneHiViT(HiViT):  # noqa: N801  (the paper's spelling)
    """HiViT with ``arch['depths'][i]`` MLP-only blocks in early stage
    ``i`` (mmpretrain's HiViT builds twice that) and an output of
    ``fc_norm(mean over tokens)`` of the last main block.

    Blocks are laid out as in iTPN's code: ``blocks`` = m₁ MLP blocks,
    PatchMerge, m₂ MLP blocks, PatchMerge, ``depth`` attention blocks, so
    ``blocks.{i}`` keys equal the official ones. Other arguments are
    mmpretrain ``HiViT``'s.

    Returns a tuple with one ``(B, embed_dims)`` tensor: use no neck and a
    ``LinearClsHead``.
    """

    def __init__(self,
                 arch: dict,
                 stem_mlp_ratio: float = 3.,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 0.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 rpe: bool = True,
                 frozen_stages: int = -1,
                 **kwargs) -> None:
        *mlp_depths, depth = arch['depths']
        # HiViT builds the patch embedding, position embeddings and patch
        # merges; with zero blocks per stage, the blocks are built here once
        super().__init__(
            arch=dict(arch, depths=[0] * len(arch['depths'])),
            stem_mlp_ratio=stem_mlp_ratio, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, drop_rate=drop_rate, norm_cfg=norm_cfg,
            rpe=rpe, out_indices=[depth - 1], frozen_stages=-1, **kwargs)
        self.arch_settings, self.depths = arch, list(arch['depths'])
        self.num_main_blocks, self.out_indices = depth, [depth - 1]
        Hp = self.patch_embed.patches_resolution[0]
        drop_paths = iter(
            torch.linspace(0, drop_path_rate,
                           sum(mlp_depths) + depth).tolist())

        def block(dim: int, num_heads: int, ratio: float) -> BlockWithRPE:
            return BlockWithRPE(
                Hp, dim, num_heads, ratio, qkv_bias, drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=next(drop_paths),
                rpe=rpe, layer_scale_init_value=layer_scale_init_value,
                norm_cfg=norm_cfg)

        dim = self.embed_dims // 2**len(mlp_depths)
        blocks = []
        for stage_depth in mlp_depths:
            blocks += [block(dim, 0, stem_mlp_ratio)
                       for _ in range(stage_depth)]
            blocks.append(PatchMerge(dim, norm_cfg))
            dim *= 2
        blocks += [block(dim, self.num_heads, mlp_ratio)
                   for _ in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        self.fc_norm = build_norm_layer(norm_cfg, self.embed_dims)
        self.blocks.apply(self._init_weights)
        # after fc_norm exists: HiViT._freeze_stages freezes it too (and
        # fails in HiViT itself, which has none)
        self.frozen_stages = frozen_stages
        if frozen_stages > 0:
            self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        # HiViT.forward is not reused: it also checks ``out_indices``
        # against the early-stage block indices.
        _, _, H, W = x.shape
        num_main = self.num_main_blocks
        x = self.patch_embed(x)
        for blk in self.blocks[:-num_main]:
            x = blk(x)
        x = x[..., 0, 0, :]  # (B, N, C): one token per patch
        if self.ape:
            x = x + self.interpolate_pos_encoding(x, H, W)
        x = self.pos_drop(x)
        rpe_index = True if self.rpe else None
        for blk in self.blocks[-num_main:]:
            x = blk(x, rpe_index)
        return (self.fc_norm(x.mean(dim=1)), )
