"""Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for
Image Recognition at Scale"): ``vit_tiny`` (192 wide, 12 deep, 3 heads) and ``vit_small`` (384, 12, 6).

A strided conv cuts the image into patches, a class token joins them, pre-norm blocks mix them, and
``forward`` returns the final-LayerNorm'd class token (B, dim). Any image whose sides are multiples
of the patch size runs: fixed 2-D sin-cos position embeddings are computed for the actual grid,
learned ones are interpolated (bicubic) from the grid of the construction ``image_size``.
``forward_tokens(x, keep)`` encodes only some patches (MAE, He et al. 2022).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.registry import register_backbone


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    shard_unit = True      # train.strategy=fsdp gathers each block's parameters only while it runs

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (the MAE code's layout): (grid_h * grid_w, dim), row-major.

    The first dim/2 channels encode the row, the rest the column; each half is
    [sin(pos * w_i), cos(pos * w_i)] with w_i = 1 / 10000^(i / (dim/4)), i < dim/4.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.to(torch.float64)[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([one_axis(rows.flatten()), one_axis(cols.flatten())], dim=1).float()


class VisionTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, patch_size: int = 16, pos_embed: str = "sincos",
                 in_channels: int = 3, image_size: int = 224, mlp_ratio: float = 4.0):
        super().__init__()
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"unknown pos_embed {pos_embed!r}; choose 'sincos' (fixed) or 'learned'")
        if patch_size < 1 or in_channels < 1:
            raise ValueError(f"patch_size and in_channels must be >= 1, got {patch_size} and {in_channels}")
        if image_size < patch_size or image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_size}")
        self.arch = dict(patch_size=patch_size, pos_embed=pos_embed, in_channels=in_channels, image_size=image_size)
        self.patch_size = patch_size
        self.feature_dim = dim
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.grid = image_size // patch_size
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.pos_embed = None
            sincos_pos_embed(dim, 1, 1)          # fail at construction, not at the first batch
        self._sincos_cache: dict[tuple, torch.Tensor] = {}
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # The MAE / timm initialisation: the patch conv as a linear layer, xavier linears, small cls token.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by the ViT patch size {p}; "
                             f"use images (augment.size / augment.eval_size) whose sides are multiples of {p}, "
                             f"or another backbone.patch_size")
        return height // p, width // p

    def position_embedding(self, grid_h: int, grid_w: int, device, dtype) -> torch.Tensor:
        """(1, 1 + grid_h * grid_w, dim): the class token's entry first (zero for sin-cos)."""
        if self.pos_embed is None:
            key = (grid_h, grid_w, device, dtype)
            if key not in self._sincos_cache:      # made on the device once, not copied there each step
                patches = sincos_pos_embed(self.feature_dim, grid_h, grid_w)
                table = torch.cat([torch.zeros(1, self.feature_dim), patches])[None]
                self._sincos_cache[key] = table.to(device=device, dtype=dtype)
            return self._sincos_cache[key]
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patches = patches.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.flatten(2).transpose(1, 2)], dim=1)

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + n, dim): the class token, then the patch tokens.

        keep: (B, n_keep) indices into the row-major patch grid; only those patches are encoded,
        in that order (position embeddings are added before the others are dropped). None = all.
        """
        return self.norm(self.blocks(self.embed_tokens(x, keep)))

    def intermediate_tokens(self, x: torch.Tensor, count: int) -> list[torch.Tensor]:
        """The final-LayerNorm'd tokens (B, 1 + n, dim) after `count` evenly spaced blocks, the last one last (of 12
        blocks and count 4: the 3rd, 6th, 9th and 12th; BEiT's and MAE's segmentation read four blocks likewise);
        fewer when the ViT has fewer blocks than `count`."""
        depth = len(self.blocks)
        taken = {max(0, round(depth * (i + 1) / count) - 1) for i in range(count)}
        tokens, outputs = self.embed_tokens(x), []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in taken:
                outputs.append(self.norm(tokens))
        return outputs

    def embed_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The sequence the blocks read: the class token, then the (kept) patches, with positions added."""
        grid_h, grid_w = self.grid_size(*x.shape[-2:])
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)             # (B, N, dim)
        pos = self.position_embedding(grid_h, grid_w, tokens.device, tokens.dtype)
        tokens = tokens + pos[:, 1:]
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return torch.cat([cls, tokens], dim=1)

    def class_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, grid_h, grid_w): the last block's attention of the class token to each patch, per head
        (the maps of DINO's figures): softmax(q_cls k^T / sqrt(head dim)) over the class token and patches."""
        grid_h, grid_w = self.grid_size(*x.shape[-2:])
        tokens = self.embed_tokens(x)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        attention = self.blocks[-1].attn
        b, n, d = tokens.shape
        q, k, _ = attention.qkv(self.blocks[-1].norm1(tokens)).view(b, n, 3, attention.heads, d // attention.heads) \
            .permute(2, 0, 3, 1, 4)
        weights = (q[:, :, :1] @ k.transpose(-2, -1) * (d // attention.heads) ** -0.5).softmax(-1)   # (B, h, 1, n)
        return weights[:, :, 0, 1:].reshape(b, attention.heads, grid_h, grid_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]


def _factory(dim: int, depth: int, heads: int):
    def build(patch_size: int = 16, pos_embed: str = "sincos", in_channels: int = 3,
              image_size: int = 224) -> VisionTransformer:
        return VisionTransformer(dim, depth, heads, patch_size=patch_size, pos_embed=pos_embed,
                                 in_channels=in_channels, image_size=image_size)
    return build


register_backbone("vit_tiny")(_factory(192, 12, 3))
register_backbone("vit_small")(_factory(384, 12, 6))
