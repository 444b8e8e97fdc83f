"""Small plain nn.Module models used by the tests."""
import torch.nn.functional as F
from torch import nn


class ExplicitAttention(nn.Module):
    """q·kᵀ → softmax (an nn.Softmax module) → ·v, as in Swin / DeiT code."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def split(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads)
        return qkv.permute(2, 0, 3, 1, 4)

    def merge(self, x):
        B, H, N, D = x.shape
        return self.proj(x.transpose(1, 2).reshape(B, N, H * D))

    def forward(self, x):
        q, k, v = self.split(x)
        attn = (q * q.shape[-1]**-0.5) @ k.transpose(-2, -1)
        return self.merge(self.softmax(attn) @ v)


class SDPAAttention(ExplicitAttention):
    """Attention through F.scaled_dot_product_attention (mmpretrain style)."""

    def forward(self, x):
        q, k, v = self.split(x)
        return self.merge(F.scaled_dot_product_attention(q, k, v))


class Block(nn.Module):

    def __init__(self, attn: nn.Module, dim: int = 32) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embed, one block of each attention kind, nn.MultiheadAttention,
    mean-pool head."""

    def __init__(self, dim: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(
            Block(ExplicitAttention(dim)), Block(SDPAAttention(dim)))
        self.mha = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = self.blocks(x)
        x = x + self.mha(x, x, x)[0]
        return self.head(x.mean(1))


class TinyCNN(nn.Module):
    """Conv-BN-ReLU stack with a transposed conv and a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
