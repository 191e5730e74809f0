"""The data2vec 2.0 encoders: the 1.0 encoders (front ends, blocks) that encode only the visible tokens.

    encoder.forward_features(features [B, T, D], mask bool [B, T] | None, padding_mask)
        mask None: every token (the teacher, probes);  mask given: only the K visible tokens (the same K in
        every row), in their original order; the output is [B, K, D] (images: [B, 1 + K, D], CLS first).

speech: x = features + ConvPositions(features with masked frames zeroed)  -> keep visible -> LN -> dropout
        -> blocks with ALiBi (-|i - j| * slope_h * scale_h, from the original frame distances)
image:  x = patches + fixed 2-D sin-cos  -> keep visible -> [CLS] + x -> LN -> blocks (post-LN)
text:   x = token + learned position embeddings, LN, dropout  -> keep visible -> blocks
        (TextConfig2 options: no position table; ALiBi from the original token distances, as speech)
"""
from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from .config_v2 import ImageConfig2, SpeechConfig2, TextConfig2
from .init import init_image_v2
from .masking import check_mask
from .masking_v2 import keep_indices
from .modalities.image import ImageEncoder
from .modalities.speech import SpeechEncoder
from .modalities.text import TextEncoder
from .transformer import EncoderOutput


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x: [B, T, ...]; ids: long [B, K] -> [B, K, ...] (x[b, ids[b, k]])."""
    idx = ids.reshape(*ids.shape, *([1] * (x.ndim - 2))).expand(*ids.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


def _visible(mask: Tensor | None, x: Tensor, padding_mask: Tensor | None):
    """The visible positions ids [B, K] (None = all) and the padding mask at them."""
    if mask is None:
        return None, padding_mask
    ids, _ = keep_indices(check_mask(mask, tuple(x.shape[:2])))
    return ids, None if padding_mask is None else gather_tokens(padding_mask, ids)


def alibi_slopes(heads: int) -> Tensor:
    """ALiBi slopes (Press et al.): 2^(-8 i / n) for a power of two n; otherwise those of the largest power
    of two below `heads` plus every other slope of twice that (fairseq get_slopes). Returns [heads]."""
    def power_of_two(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(heads).is_integer():
        return torch.tensor(power_of_two(heads))
    p = 2 ** math.floor(math.log2(heads))
    return torch.tensor(power_of_two(p) + power_of_two(2 * p)[0::2][:heads - p])


def alibi_bias(positions: Tensor, slopes: Tensor, scale: Tensor) -> Tensor:
    """Symmetric ALiBi: -|i - j| * slope_h * max(scale_h, 0). positions: [B, K] original indices (or [1, T]);
    slopes, scale: [H]. Returns the additive attention bias [B, H, K, K] (fp32)."""
    p = positions.float()
    dist = (rearrange(p, "b i -> b 1 i 1") - rearrange(p, "b j -> b 1 1 j")).abs()
    return -dist * rearrange(slopes * scale.float().clamp_min(0), "h -> 1 h 1 1")


def sincos_2d(dim: int, grid: tuple[int, int]) -> Tensor:
    """MAE's fixed 2-D sin-cos positions [H * W, dim] (row-major patches, no CLS row): the first dim/2
    channels encode the column, the second the row; each half is [sin(p w), cos(p w)],
    w_i = 10000^(-i / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need dim divisible by 4, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")

    def half(p):
        a = rearrange(p, "h w -> (h w) 1") * omega
        return torch.cat([a.sin(), a.cos()], dim=1)
    return torch.cat([half(cols), half(rows)], dim=1).float()


class SpeechEncoder2(SpeechEncoder):
    """1.0 CNN + conv positions; ALiBi with a learned per-head scale (`alibi_scale`, init 1, clamped >= 0)."""

    def __init__(self, cfg: SpeechConfig2):
        super().__init__(cfg)
        del self.mask_emb  # 2.0 drops masked frames instead of replacing them
        self.register_buffer("slopes", alibi_slopes(cfg.heads), persistent=False)
        self.alibi_scale = nn.Parameter(torch.ones(cfg.heads)) if cfg.alibi else None

    def alibi(self, positions: Tensor) -> Tensor:
        """positions: [B, K] frame indices (or [1, T]) -> additive bias [B, H, K, K] (fp32)."""
        return alibi_bias(positions, self.slopes, self.alibi_scale)

    def forward_features(self, features: Tensor, mask: Tensor | None = None,
                         padding_mask: Tensor | None = None) -> EncoderOutput:
        """features: [B, T, D]; mask, padding_mask: bool [B, T]. Returns EncoderOutput over the visible frames."""
        x = features
        if padding_mask is not None:
            x = x.masked_fill(rearrange(padding_mask, "b t -> b t 1"), 0.0)
        zeroed = x if mask is None else x.masked_fill(rearrange(mask, "b t -> b t 1"), 0.0)  # encoder_zero_mask
        x = x + self.pos_conv(zeroed)
        ids, padding_mask = _visible(mask, x, padding_mask)
        if ids is not None:
            x = gather_tokens(x, ids)
        x = self.dropout(self.norm(x))
        bias = None
        if self.alibi_scale is not None:
            pos = ids if ids is not None else torch.arange(x.shape[1], device=x.device)[None]
            bias = self.alibi(pos).to(x.dtype)
        x, hidden, results = self.transformer(x, padding_mask, bias)
        return EncoderOutput(x, hidden, results, padding_mask)


class ImageEncoder2(ImageEncoder):
    """Patch embedding + fixed sin-cos positions; CLS (N(0, 1)) after masking; LN on the block input."""

    def __init__(self, cfg: ImageConfig2):
        if cfg.norm_first or cfg.rel_pos_bias != "none" or cfg.abs_pos_emb:
            raise ValueError("ImageConfig2 is post-LN with fixed sin-cos positions: norm_first=False, "
                             "rel_pos_bias='none', abs_pos_emb=False")
        super().__init__(cfg)
        del self.mask_token
        if cfg.init == "released":  # 2.0's init, not BEiT's (init.init_image_v2)
            init_image_v2(self)
        nn.init.normal_(self.cls_token, std=1.0)  # fairseq init_extra_token_zero: false
        self.register_buffer("sincos", sincos_2d(cfg.dim, self.grid), persistent=False)
        self.context_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)

    def forward_features(self, features: Tensor, mask: Tensor | None = None,
                         padding_mask: Tensor | None = None) -> EncoderOutput:
        """features: patches [B, N, D]; mask: bool [B, N]. Returns EncoderOutput over CLS + visible patches."""
        x = features + self.sincos.to(features.dtype)
        ids, _ = _visible(mask, x, None)
        if ids is not None:
            x = gather_tokens(x, ids)
        x = torch.cat([repeat(self.cls_token, "1 1 d -> b 1 d", b=x.shape[0]).to(x.dtype), x], dim=1)
        x = self.dropout(self.context_norm(x))
        x, hidden, results = self.transformer(x, None, None)
        return EncoderOutput(self.norm(x), hidden, results, None)


class TextEncoder2(TextEncoder):
    """The 1.0 RoBERTa embedding; `mask` drops tokens (no `<mask>` id is ever fed). Options (TextConfig2):
    no absolute positions, ALiBi over the original token distances (its scale is copied by the teacher,
    which runs on the student's embeddings)."""

    groups = {"front_end": ("tokens.", "emb_norm."), "positional": ("positions.", "alibi_scale")}

    def __init__(self, cfg: TextConfig2):
        super().__init__(cfg)
        if cfg.positions == "none":
            self.positions = None
        self.alibi_scale = nn.Parameter(torch.ones(cfg.heads)) if cfg.alibi else None
        self.register_buffer("slopes", alibi_slopes(cfg.heads), persistent=False)

    def forward(self, x: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> EncoderOutput:
        """x: token ids long [B, T]; mask: bool [B, T], True = drop the token."""
        features, padding_mask = self.embed(x, padding_mask)
        return self.forward_features(features, mask, padding_mask)

    def forward_features(self, features: Tensor, mask: Tensor | None = None,
                         padding_mask: Tensor | None = None) -> EncoderOutput:
        """features: embeddings [B, T, D] (positions included); mask: bool [B, T]. Output over visible tokens."""
        ids, padding_mask = _visible(mask, features, padding_mask)
        x = features if ids is None else gather_tokens(features, ids)
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        bias = None
        if self.alibi_scale is not None:  # right padding: a token's index is its position
            pos = ids if ids is not None else torch.arange(x.shape[1], device=x.device)[None]
            bias = alibi_bias(pos, self.slopes, self.alibi_scale).to(x.dtype)
        x, hidden, results = self.transformer(x, padding_mask, bias)
        return EncoderOutput(x, hidden, results, padding_mask)


def build_encoder_v2(enc):
    """The 2.0 encoder of a 2.0 encoder config."""
    for klass, encoder in ((SpeechConfig2, SpeechEncoder2), (ImageConfig2, ImageEncoder2), (TextConfig2, TextEncoder2)):
        if isinstance(enc, klass):
            return encoder(enc)
    raise TypeError(f"no data2vec 2.0 encoder for config type {type(enc).__name__}")
