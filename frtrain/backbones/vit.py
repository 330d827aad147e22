"""insightface's face vision transformer (arcface_torch ``backbones/vit.py``), with its parameter names.

insightface's ViT-T/S/B/L checkpoints (``backbone.pth``) load into :class:`FaceViT` with ``strict=True`` and give the
same embeddings (tests/test_vit.py builds insightface's module from its source when ``FRTRAIN_INSIGHTFACE_SRC`` is
set, and always checks the key list read off it). The architecture, as insightface writes it:

- ``patch_embed.proj``: a ``patch_size`` x ``patch_size`` convolution with that stride: a 112 x 112 crop with 9 x 9
  patches gives 12 x 12 = 144 tokens of ``embed_dim``; ``pos_embed`` (1, 144, D) is added; no class token;
- in training, PatchDrop when ``mask_ratio > 0``: each sample keeps a random ``int(144 x 0.9)`` tokens through the
  blocks and the dropped positions are filled with ``mask_token`` after the final norm, in place. 0.9 whatever
  ``mask_ratio`` says: insightface's ``forward_features`` calls ``random_masking(x)`` without the ratio, so its
  default, 0.1, is what its runs drop (:data:`PATCH_DROP`); frtrain does the same so its runs are insightface's;
- ``depth`` pre-norm blocks: ``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))``; attention
  without a qkv bias, its softmax computed in float32 whatever the autocast; the MLP ``fc1 -> ReLU6 -> fc2``;
  stochastic depth rising linearly to ``drop_path_rate``;
- ``norm`` (LayerNorm in float32), then the feature head on the flattened tokens: ``feature.0`` Linear(144 D, D)
  without bias, ``feature.1`` BatchNorm1d(D), ``feature.2`` Linear(D, 512) without bias, ``feature.3``
  BatchNorm1d(512) (eps 2e-5 both): the embedding.

``norm_layer="bn"`` (insightface's option) normalises over the tokens with a BatchNorm1d (``norm1.bn`` ...).
``checkpointing=True`` recomputes each block in the backward pass (``torch.utils.checkpoint``, non-reentrant, the
random state kept, so dropout paths are the same): the gradients are those of the plain forward, the activations
one block's. Input: (B, 3, H, W) normalised with mean = std = 0.5; output (B, embedding_size).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from frtrain.backbones.common import HALF, as_hw
from frtrain.errors import ConfigError

#: the share of tokens PatchDrop drops when ``mask_ratio > 0`` (insightface's random_masking default, the value its
#: forward pass uses whatever the configured mask_ratio)
PATCH_DROP = 0.1

#: insightface's named variants (arcface_torch/backbones/__init__.py): embed_dim, depth, heads, drop path, mask ratio
VARIANTS = {
    "vit_t": dict(embed_dim=256, depth=12, num_heads=8, drop_path_rate=0.1, mask_ratio=0.1),
    "vit_s": dict(embed_dim=512, depth=12, num_heads=8, drop_path_rate=0.1, mask_ratio=0.1),
    "vit_b": dict(embed_dim=512, depth=24, num_heads=8, drop_path_rate=0.1, mask_ratio=0.1),
    "vit_l": dict(embed_dim=768, depth=24, num_heads=8, drop_path_rate=0.05, mask_ratio=0.05),
}


class _TokenBatchNorm(nn.Module):
    """insightface's VITBatchNorm: BatchNorm1d over the token axis of (B, N, D), as ``<name>.bn``."""

    def __init__(self, num_tokens: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_tokens)

    def forward(self, x):
        return self.bn(x)


class Attention(nn.Module):
    """Multi-head self-attention, ``qkv`` and ``proj`` as insightface names them; the attention in float32."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = qkv[0].float(), qkv[1].float(), qkv[2].float()
            out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d / heads)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_tokens: int, mlp_ratio: float, qkv_bias: bool, drop_path: float,
                 norm_layer: str):
        super().__init__()
        norm = (lambda: nn.LayerNorm(dim)) if norm_layer == "ln" else (lambda: _TokenBatchNorm(num_tokens))
        self.norm1 = norm()
        self.norm2 = norm()
        self.attn = Attention(dim, num_heads, qkv_bias)
        if drop_path > 0:
            from timm.layers import DropPath  # timm's stochastic depth, as insightface; imported here: timm takes ~1 s

            self.drop_path = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, input_size: tuple[int, int], patch_size: int, embed_dim: int):
        super().__init__()
        self.grid = (input_size[0] // patch_size, input_size[1] // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class FaceViT(nn.Module):
    """insightface's face ViT; ``variant`` (vit_t, vit_s, vit_b, vit_l) sets the sizes, any given option overrides.

    Args:
        variant: one of :data:`VARIANTS`, or None with ``embed_dim``, ``depth`` and ``num_heads`` given.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer (insightface: mlp_ratio 4, no qkv bias).
        patch_size: pixels per patch side (9 for 112 x 112 crops).
        input_size: H and W of the input in pixels.
        embedding_size: d, the output (insightface's ``num_features``, 512).
        drop_path_rate: the last block's stochastic-depth rate (linear from 0).
        mask_ratio: > 0 turns PatchDrop on in training (insightface's code then drops :data:`PATCH_DROP` of the
            tokens, whatever the value); 0: off.
        norm_layer: ``ln`` (LayerNorm) or ``bn`` (BatchNorm over the tokens).
        checkpointing: recompute each block in the backward pass (less memory, ~30% more time).
    """

    def __init__(self, variant: str | None = "vit_t", embed_dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, mlp_ratio: float = 4.0, qkv_bias: bool = False, patch_size: int = 9,
                 input_size: int | Sequence[int] = 112, embedding_size: int = 512,
                 drop_path_rate: float | None = None, mask_ratio: float | None = None, norm_layer: str = "ln",
                 checkpointing: bool = False):
        super().__init__()
        if variant is not None and variant not in VARIANTS:
            raise ConfigError(f"backbone.variant={variant!r}: expected one of {', '.join(VARIANTS)} or null")
        preset = dict(VARIANTS.get(variant, {}))
        given = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, drop_path_rate=drop_path_rate,
                     mask_ratio=mask_ratio)
        preset.update({k: v for k, v in given.items() if v is not None})
        missing = [k for k in ("embed_dim", "depth", "num_heads") if k not in preset]
        if missing:
            raise ConfigError(f"backbone: without a variant, give {', '.join('backbone.' + k for k in missing)}")
        dim, depth, heads = int(preset["embed_dim"]), int(preset["depth"]), int(preset["num_heads"])
        drop_path_rate, mask_ratio = float(preset.get("drop_path_rate", 0.0)), float(preset.get("mask_ratio", 0.0))
        if dim < 1 or depth < 1 or heads < 1 or dim % heads:
            raise ConfigError(f"backbone: embed_dim={dim} must be a positive multiple of num_heads={heads}, depth >= 1")
        if not 0 <= mask_ratio < 1 or not 0 <= drop_path_rate < 1:
            raise ConfigError(f"backbone: mask_ratio={mask_ratio} and drop_path_rate={drop_path_rate} must be in [0, 1)")
        if norm_layer not in ("ln", "bn"):
            raise ConfigError(f"backbone.norm_layer={norm_layer!r}: expected ln or bn")
        self.input_size = as_hw(input_size)
        if int(patch_size) < 1 or min(self.input_size) < int(patch_size):
            raise ConfigError(f"backbone.patch_size={patch_size}: must be between 1 and the input side {min(self.input_size)}")
        self.mean, self.std = HALF, HALF
        self.embedding_size = int(embedding_size)
        self.embed_dim, self.mask_ratio, self.checkpointing = dim, mask_ratio, bool(checkpointing)
        self.variant = variant
        self.patch_embed = PatchEmbed(self.input_size, int(patch_size), dim)
        n = self.num_patches = self.patch_embed.num_patches
        # parameters registered in insightface's order: its state dict starts pos_embed, mask_token
        self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # float32 steps, as insightface
        self.blocks = nn.ModuleList(Block(dim, heads, n, float(mlp_ratio), bool(qkv_bias), rates[i], norm_layer)
                                    for i in range(depth))
        self.norm = nn.LayerNorm(dim) if norm_layer == "ln" else _TokenBatchNorm(n)
        self.feature = nn.Sequential(nn.Linear(dim * n, dim, bias=False), nn.BatchNorm1d(dim, eps=2e-5),
                                     nn.Linear(dim, self.embedding_size, bias=False),
                                     nn.BatchNorm1d(self.embedding_size, eps=2e-5))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # own parameters come first in the state dict:
        # pos_embed, mask_token, then the children's, as in insightface's module
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _drop_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PatchDrop as insightface: (B, N, D) -> (B, keep, D) and the order that puts the tokens back."""
        b, n, d = x.shape
        keep = int(n * (1 - PATCH_DROP))
        shuffle = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        return torch.gather(x, 1, shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, d)), restore

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"FaceViT takes {self.input_size[0]}x{self.input_size[1]} inputs, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        x = self.patch_embed(x) + self.pos_embed
        drop = self.training and self.mask_ratio > 0
        if drop:
            x, restore = self._drop_patches(x)
        for block in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x.float())
        if drop:
            fill = self.mask_token.to(x.dtype).expand(b, restore.shape[1] - x.shape[1], -1)
            x = torch.gather(torch.cat([x, fill], dim=1), 1, restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        return self.feature(x.reshape(b, self.num_patches * self.embed_dim))
