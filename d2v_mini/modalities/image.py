"""Image encoder: the BEiT-style ViT used by data2vec 1.0 vision.

    image [B, C, H, W] --Conv2d(p, stride p)--> patches [B, N, D]          (N = (H / p) * (W / p))
    patches --mask_token at masked patches--> [CLS] + patches --> pre-LN blocks with a relative
    position bias (BEiT, shared by all blocks or one per block) --> final LayerNorm
"""
from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from ..config import ImageConfig
from ..encoder import Encoder
from ..init import check_init, init_image
from ..masking import check_mask
from ..transformer import EncoderOutput, Transformer


class RelativePositionBias(nn.Module):
    """BEiT's learned relative position bias for a (h, w) patch grid plus a CLS token.

    The table has one row per 2-D offset ((2h - 1) * (2w - 1) rows) plus three rows for
    CLS->patch, patch->CLS and CLS->CLS; forward returns the bias [heads, N + 1, N + 1]."""

    def __init__(self, grid: tuple[int, int], heads: int):
        super().__init__()
        h, w = grid
        self.num_offsets = (2 * h - 1) * (2 * w - 1)
        self.table = nn.Parameter(torch.zeros(self.num_offsets + 3, heads))
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords = rearrange(torch.stack([ys, xs]), "c h w -> (h w) c")  # [N, 2]
        rel = rearrange(coords, "i c -> i 1 c") - rearrange(coords, "j c -> 1 j c")  # [N, N, 2]
        offset = (rel[..., 0] + h - 1) * (2 * w - 1) + (rel[..., 1] + w - 1)  # [N, N], row-major offset id
        index = torch.zeros(h * w + 1, h * w + 1, dtype=torch.long, device=offset.device)
        index[1:, 1:] = offset
        index[0, :] = self.num_offsets  # CLS attends to patches
        index[:, 0] = self.num_offsets + 1  # patches attend to CLS
        index[0, 0] = self.num_offsets + 2  # CLS to CLS
        self.register_buffer("index", index, persistent=False)

    def forward(self) -> Tensor:
        """Returns [heads, N + 1, N + 1]."""
        return rearrange(self.table[self.index], "i j h -> h i j")


class ImageEncoder(Encoder):
    groups = {"front_end": ("patch_embed.",), "positional": ("rel_pos", "pos_embed")}
    has_cls = True

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} must be a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.grid = (cfg.image_size // cfg.patch_size,) * 2
        n = self.grid[0] * self.grid[1]
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.dim)) if cfg.abs_pos_emb else None
        if cfg.rel_pos_bias == "shared":
            self.rel_pos = RelativePositionBias(self.grid, cfg.heads)
        elif cfg.rel_pos_bias == "per_layer":
            self.rel_pos = nn.ModuleList(RelativePositionBias(self.grid, cfg.heads) for _ in range(cfg.depth))
        else:
            self.rel_pos = None
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps) if cfg.final_norm else nn.Identity()
        for p in (self.cls_token, self.mask_token) + ((self.pos_embed,) if self.pos_embed is not None else ()):
            nn.init.trunc_normal_(p, std=0.02)
        if check_init(cfg.init) == "released":  # BEiT: truncated normal, output projections / sqrt(2 l)
            init_image(self)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed(self, x: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, None]:
        """x: float images [B, C, H, W] with H = W = cfg.image_size. Returns patches [B, N, D] and None."""
        c, s = self.cfg.in_chans, self.cfg.image_size
        if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s) or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"image input must be float [B, {c}, {s}, {s}] (batch, channels, height, width), got {got}")
        if padding_mask is not None:
            raise ValueError("images have no padding: pass padding_mask=None")
        return rearrange(self.patch_embed(x), "b d h w -> b (h w) d"), None

    def forward_features(self, features: Tensor, mask: Tensor | None = None,
                         padding_mask: Tensor | None = None) -> EncoderOutput:
        """features: patches [B, N, D]; mask: bool [B, N] over patches (True = masked).

        Returns EncoderOutput over N + 1 tokens: position 0 is CLS, positions 1.. are the patches."""
        x = features
        if mask is not None:
            check_mask(mask, tuple(x.shape[:2]))
            w = rearrange(mask, "b n -> b n 1").to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = torch.cat([repeat(self.cls_token, "1 1 d -> b 1 d", b=x.shape[0]).to(x.dtype), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.dropout(x)
        if isinstance(self.rel_pos, nn.ModuleList):
            bias = [rp() for rp in self.rel_pos]
        else:
            bias = self.rel_pos() if self.rel_pos is not None else None
        x, hidden, results = self.transformer(x, None, bias)
        return EncoderOutput(self.norm(x), hidden, results, None)
