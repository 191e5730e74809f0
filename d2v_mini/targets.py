"""Regression targets: the average of the teacher's top-K normalised layer outputs.

    y = final_norm( mean_{l in top K} norm_l( a_l ) )        computed in fp32

norm_l is an instance norm over time (speech: each channel zero-mean, unit-variance over the frames
of one utterance) or a parameter-free layer norm over channels (text, vision); the optional final norm
is vision's second layer norm. a_l is a block's FFN output before the last residual (`site="ffn"`,
the paper's choice; in a pre-LN block with layer scale, after the scale, as data2vec-vision reads it)
or the block output (`site="end"`, the released vision code).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from .config import TargetConfig
from .masking import check_mask
from .transformer import EncoderOutput


def instance_norm(x: Tensor, padding_mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise each channel over time, per sample. x: [B, T, D]; padding_mask: bool [B, T].

    Padded frames are left out of the statistics (fairseq's F.instance_norm includes them; it pads
    nothing in its speech recipe, where batches are cropped to the shortest utterance)."""
    if padding_mask is None:
        return rearrange(F.instance_norm(rearrange(x, "b t d -> b d t"), eps=eps), "b d t -> b t d")
    keep = rearrange((~check_mask(padding_mask, tuple(x.shape[:2]), "padding_mask")).to(x.dtype), "b t -> b t 1")
    n = reduce(keep, "b t 1 -> b 1 1", "sum").clamp_min(1)
    mean = reduce(x * keep, "b t d -> b 1 d", "sum") / n
    var = reduce(((x - mean) * keep) ** 2, "b t d -> b 1 d", "sum") / n
    return (x - mean) / torch.sqrt(var + eps) * keep


def layer_norm(x: Tensor) -> Tensor:
    """Parameter-free layer norm over channels. x: [B, T, D]."""
    return F.layer_norm(x, x.shape[-1:])


def normalize(x: Tensor, kind: str, padding_mask: Tensor | None = None) -> Tensor:
    if kind == "instance":
        return instance_norm(x, padding_mask)
    if kind == "layer":
        return layer_norm(x)
    if kind == "none":
        return x
    raise ValueError(f"unknown target norm {kind!r}: expected 'instance', 'layer' or 'none'")


def target_layers(out: EncoderOutput, cfg: TargetConfig) -> list[Tensor]:
    """The top-K layer outputs [B, T, D] at the configured site (FFN output or end of block)."""
    layers = out.layer_results if cfg.site == "ffn" else out.hidden_states[1:]
    if not 1 <= cfg.top_k <= len(layers):
        raise ValueError(f"top_k = {cfg.top_k} but the teacher has {len(layers)} blocks")
    top = list(layers[-cfg.top_k:])
    assert all(t is not None for t in top), "a target layer was skipped: the teacher must run in eval mode"
    return top


def build_targets(layers: list[Tensor], cfg: TargetConfig, padding_mask: Tensor | None = None) -> Tensor:
    """layers: K tensors [B, T, D] (teacher outputs, CLS already removed); padding_mask: bool [B, T].

    Returns the targets [B, T, D] in fp32: final_norm(mean_l norm_l(layer_l))."""
    y = torch.stack([normalize(t.float(), cfg.layer_norm, padding_mask) for t in layers])
    y = reduce(y, "k b t d -> b t d", "mean")
    return normalize(y, cfg.final_norm, padding_mask)
