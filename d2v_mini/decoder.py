"""The data2vec 2.0 decoder: fills the masked slots and predicts the teacher's targets at every position.

    encoder output at the K visible tokens [B, K, D]  --dropout-->  full length [B, T, D] in the original
    order, N(0, noise_std^2) noise at the T - K masked slots (no positional information is added)
    --> layers x [Conv(k, pad k//2, groups) -> LN over channels (no affine) -> GELU] (+ residual when the
        widths match)  --> projection to D   -> predictions [B, T, D]

1-D convolutions over time (speech, text) or 2-D over the patch grid (images), fairseq Decoder1d / 2d.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config_v2 import DecoderConfig
from .masking import check_mask


class DecoderLayer(nn.Module):
    """Conv (1-D or 2-D, padding k//2, trailing frame dropped for an even 1-D kernel) -> LN -> GELU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int, conv2d: bool):
        super().__init__()
        conv = nn.Conv2d if conv2d else nn.Conv1d
        self.kernel, self.conv2d = kernel, conv2d
        self.conv = conv(c_in, c_out, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C_in, T] or [B, C_in, H, W] -> the same layout with C_out channels."""
        x = self.conv(x)
        if self.kernel % 2 == 0:  # fairseq SamePad
            x = x[..., :-1, :-1] if self.conv2d else x[..., :-1]
        x = torch.movedim(x, 1, -1)
        x = F.gelu(F.layer_norm(x, x.shape[-1:], eps=1e-5))
        return torch.movedim(x, -1, 1)


class Decoder(nn.Module):
    def __init__(self, dim: int, cfg: DecoderConfig, grid: tuple[int, int] | None = None):
        super().__init__()
        if cfg.conv2d and grid is None:
            raise ValueError("a 2-D decoder needs the patch grid (H, W)")
        self.cfg, self.grid = cfg, grid
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(dim if i == 0 else cfg.dim, cfg.dim, cfg.kernel, cfg.groups, cfg.conv2d) for i in range(cfg.layers))
        if cfg.projection_layers == 1:
            self.proj = nn.Linear(cfg.dim, dim)
        elif cfg.projection_layers == 2:
            self.proj = nn.Sequential(nn.Linear(cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Linear(2 * cfg.dim, dim))
        else:
            raise ValueError(f"decoder projection_layers must be 1 or 2, got {cfg.projection_layers}")

    def fill(self, visible: Tensor, mask: Tensor, noise_std: float, generator: torch.Generator | None = None) -> Tensor:
        """visible: [B, K, D] (kept tokens in order); mask: bool [B, T] with T - K True per row.

        Returns [B, T, D]: the visible tokens at their positions, N(0, noise_std^2) at the masked slots."""
        B, T = check_mask(mask).shape
        if visible.shape[:2] != (B, T - int(mask[0].sum()) if B else 0):
            raise ValueError(f"decoder got {tuple(visible.shape[:2])} visible tokens for a mask of shape {(B, T)} "
                             f"with {int(mask[0].sum()) if B else 0} masked per row")
        gen = generator if visible.device.type == "cpu" else None  # the mask generator lives on the CPU
        full = torch.randn(B, T, visible.shape[-1], generator=gen, device=visible.device, dtype=visible.dtype)
        full = full * noise_std
        return full.masked_scatter(rearrange(~mask, "b t -> b t 1"), visible)

    def forward(self, visible: Tensor, mask: Tensor, noise_std: float = 0.01,
                generator: torch.Generator | None = None) -> Tensor:
        """visible: encoder output at the visible tokens [B, K, D] (no CLS); mask: bool [B, T], True = masked.
        Returns predictions [B, T, D] at every position (the loss reads the masked ones)."""
        x = self.fill(self.input_dropout(visible), mask, noise_std, generator)
        if self.cfg.conv2d:
            h, w = self.grid
            x = rearrange(x, "b (h w) d -> b d h w", h=h, w=w)
        else:
            x = rearrange(x, "b t d -> b d t")
        for layer in self.layers:
            y = layer(x)
            x = x + y if self.cfg.residual and y.shape == x.shape else y
        x = rearrange(x, "b d h w -> b (h w) d") if self.cfg.conv2d else rearrange(x, "b d t -> b t d")
        return self.proj(x)
