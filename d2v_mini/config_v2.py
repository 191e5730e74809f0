"""Configuration of data2vec 2.0 (Baevski et al. 2022, fairseq `data2vec_multi`).

A 2.0 recipe is a `Data2VecConfig` with `version=2`, one of the 2.0 encoder configs below, and a `v2`
section (`V2Config`): multi-mask `clone_batch`, the 2.0 masks and the convolutional decoder. The shared
sections keep their meaning: `targets` (top-K, per-layer and final norms), `ema` (decay schedule and what
the teacher shares with the student), `loss` (L2, `scale`), `optim`, `guard`.

The 2.0 encoders reuse the 1.0 front ends and blocks (post-LN everywhere) and differ in positions:
speech adds learned-scale ALiBi to the conv positions, images use fixed 2-D sin-cos positions and no
relative bias, text keeps learned absolute positions (ALiBi instead is an option, `TextConfig2`). `prenet_depth` blocks (fairseq's modality-specific context encoder)
are the first blocks of the stack; only the last `depth - prenet_depth` ("shared") blocks give targets.
Source: ../shared/reference/data2vec-recipes.md section 4.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import ImageConfig, SpeechConfig, TextConfig, _Checked


@dataclass
class SpeechConfig2(SpeechConfig):
    """data2vec 2.0 speech encoder: 1.0 CNN front end and conv positions, plus ALiBi with one learned
    scale per head (init 1.0, clamped >= 0); masked frames are zeroed before the conv positions."""

    version: int = 2
    alibi: bool = True
    prenet_depth: int = 0  # the first blocks (fairseq context encoder); depth counts them


@dataclass
class ImageConfig2(ImageConfig):
    """data2vec 2.0 ViT: patch embedding, fixed 2-D sin-cos positions (added before masking), a CLS token
    (N(0, 1) init) added after masking, LN on the block input (post-LN context encoder), post-LN blocks."""

    version: int = 2
    norm_first: bool = False
    rel_pos_bias: Literal["shared", "per_layer", "none"] = "none"
    final_norm: bool = False
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    attn_dropout: float = 0.0
    prenet_depth: int = 0


@dataclass
class TextConfig2(TextConfig):
    """data2vec 2.0 text encoder: the RoBERTa embedding of 1.0; masked tokens are dropped, never `<mask>`.

    Positions (fairseq D2vTextConfig / D2vModalityConfig options; the released text configs use learned
    absolute positions and no ALiBi): `positions` "learned" (learned_pos) or "none"
    (no_token_positional_embeddings); `alibi` adds speech's ALiBi with one learned scale per head
    (use_alibi_encoder, learned_alibi_scale_per_head), shared with the teacher like the embeddings."""

    version: int = 2
    prenet_depth: int = 0
    positions: Literal["learned", "none"] = "learned"
    alibi: bool = False


@dataclass
class DecoderConfig(_Checked):
    """The light conv decoder: `layers` x [Conv(k, pad k//2, groups) -> LN (no affine) -> GELU], a
    residual around every layer whose input and output widths match (`residual`), then a projection to
    the model width (1 Linear, or Linear(dim, 2 dim) -> GELU -> Linear with `projection_layers` 2)."""

    dim: int = 384
    kernel: int = 7
    layers: int = 4
    groups: int = 16
    residual: bool = True
    projection_layers: int = 1
    input_dropout: float = 0.1
    conv2d: bool = False  # images: Conv2d over the patch grid


@dataclass
class V2Config(_Checked):
    """What data2vec 2.0 adds to a recipe.

    mask_kind:  "block_1d" (speech, fairseq compute_block_mask_1d), "inverse_block_2d" (images: kept
                blocks, compute_block_mask_2d with inverse_mask), "random" (text, MAE random_masking).
    mask_prob:  fraction masked; every row masks exactly int(T * mask_prob) (images keep exactly
                int(T * (1 - mask_prob))); mask_length: block side; mask_prob_adjust: extra block centres.
    clone_batch: M masked copies of every sample share one teacher pass and one target.
    cls_loss:   images: weight of the CLS prediction of the token-mean target (0 = none).
    """

    clone_batch: int = 8
    mask_kind: Literal["block_1d", "inverse_block_2d", "random"] = "block_1d"
    mask_prob: float = 0.5
    mask_length: int = 5
    mask_prob_adjust: float = 0.05
    mask_noise_std: float = 0.01
    cls_loss: float = 0.0
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


ENCODER_CONFIGS_V2 = {"speech": SpeechConfig2, "image": ImageConfig2, "text": TextConfig2}


def build_v2(d: dict) -> V2Config:
    """Rebuild a V2Config from `asdict` output (used by Data2VecConfig.from_dict)."""
    from .config import _build
    return _build(V2Config, {**d, "decoder": _build(DecoderConfig, d["decoder"])})
