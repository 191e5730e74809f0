"""The Transformer shared by all modalities.

Two block forms, as in the released data2vec 1.0 code:
  - post-LN (speech: wav2vec 2.0, text: RoBERTa)     x = LN(x + Attn(x));  x = LN(x + FFN(x))
  - pre-LN with layer scale (vision: BEiT)          x = x + g1 * Attn(LN(x));  x = x + g2 * FFN(LN(x))

Every block returns two tensors: its output (end of block) and its FFN output before the last
residual, which is where data2vec 1.0 reads its targets ("fc_results" / `layer_results` in fairseq).
In a pre-LN block with layer scale that FFN output is read after the scale, g2 * FFN(LN(x)), as
data2vec-vision's `fc_feature` (`layer_results='fc'`) is: the branch that is added to the residual.

Shapes: B batch, T tokens, D model width, H heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import TransformerConfig


@dataclass
class EncoderOutput:
    """What every encoder returns (the contract other modules rely on).

    last_hidden_state: [B, T, D] final output (after the final LN for pre-LN encoders)
    hidden_states:     L + 1 tensors [B, T, D]: the input of block 0, then each block's output
                       (Hugging Face's `output_hidden_states` convention)
    layer_results:     L tensors [B, T, D]: each block's FFN output before the last residual, after
                       the layer scale g2 in a pre-LN block (None for a block skipped by layer drop,
                       which happens only in training)
    padding_mask:      bool [B, T], True = padding (None when the batch has no padding)
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...]
    layer_results: tuple[Tensor | None, ...]
    padding_mask: Tensor | None = None


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero the whole residual branch of a random subset of samples. x: [B, ...]."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device, dtype=x.dtype) >= p
    return x * keep / (1 - p)


class Attention(nn.Module):
    """Multi-head self-attention on `F.scaled_dot_product_attention`."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0, key_bias: bool = True):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} must be divisible by heads {heads}"
        self.heads, self.attn_dropout = heads, attn_dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=key_bias)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: [B, T, D]; attn_mask: float [B or 1, H or 1, T, T] added to the logits. Returns [B, T, D]."""
        q, k, v = (rearrange(f(x), "b t (h d) -> b h t d", h=self.heads) for f in (self.q, self.k, self.v))
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.out(rearrange(y, "b h t d -> b t (h d)"))


class Block(nn.Module):
    """One Transformer block, post-LN or pre-LN (with optional layer scale)."""

    def __init__(self, cfg: TransformerConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm_first, self.drop_path = cfg.norm_first, drop_path
        self.attn = Attention(cfg.dim, cfg.heads, cfg.attn_dropout, cfg.key_bias)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)  # post-LN: after attention
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)  # post-LN: after the FFN
        self.dropout = nn.Dropout(cfg.dropout)
        self.act_dropout = nn.Dropout(cfg.activation_dropout)
        if cfg.layer_scale_init > 0:
            self.gamma1 = nn.Parameter(torch.full((cfg.dim,), cfg.layer_scale_init))
            self.gamma2 = nn.Parameter(torch.full((cfg.dim,), cfg.layer_scale_init))
        else:
            self.gamma1 = self.gamma2 = None

    def ffn(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, T, D]: fc2(dropout(gelu(fc1(x)))), before any residual dropout."""
        return self.fc2(self.act_dropout(F.gelu(self.fc1(x))))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: [B, T, D]. Returns (block output [B, T, D], FFN output before the last residual [B, T, D];
        pre-LN with layer scale: gamma2 * FFN, the released vision target site)."""
        if self.norm_first:  # BEiT: x + drop_path(gamma * f(LN(x)))
            a = self.dropout(self.attn(self.norm1(x), attn_mask))
            x = x + drop_path(a if self.gamma1 is None else self.gamma1 * a, self.drop_path, self.training)
            h = self.ffn(self.norm2(x))
            h = h if self.gamma2 is None else self.gamma2 * h  # data2vec-vision fc_feature: after layer scale
            x = x + drop_path(self.dropout(h), self.drop_path, self.training)
        else:  # wav2vec 2.0 / RoBERTa: LN(x + f(x))
            x = self.norm1(x + self.dropout(self.attn(x, attn_mask)))
            h = self.ffn(x)
            x = self.norm2(x + self.dropout(h))
        return x, h


def attention_mask(padding_mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Combine a key padding mask (bool [B, T], True = pad) and an additive bias ([H, T, T] or
    [B, H, T, T]) into one float mask [B or 1, H or 1, T, T] for `scaled_dot_product_attention`."""
    mask = None
    if padding_mask is not None:
        neg = torch.finfo(dtype).min
        mask = rearrange(padding_mask.to(dtype) * neg, "b t -> b 1 1 t")
    if bias is not None:
        bias = bias.to(dtype)
        bias = rearrange(bias, "h i j -> 1 h i j") if bias.ndim == 3 else bias
        mask = bias if mask is None else mask + bias
    return mask


class Transformer(nn.Module):
    """A stack of blocks (no embedding, no final norm: the modality encoders own those)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layerdrop = cfg.layerdrop
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear 0 -> drop_path
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                attn_bias: Tensor | list[Tensor] | None = None):
        """x: [B, T, D]; padding_mask: bool [B, T] (True = pad); attn_bias: one additive bias
        [H, T, T] for every block, or a list with one per block.

        Returns (x [B, T, D], hidden_states: L + 1 tensors, layer_results: L tensors)."""
        hidden, results = [x], []
        if isinstance(attn_bias, (list, tuple)):  # one bias per block (BEiT per-layer relative position)
            assert len(attn_bias) == len(self.blocks), f"{len(attn_bias)} biases for {len(self.blocks)} blocks"
            masks = [attention_mask(padding_mask, b, x.dtype) for b in attn_bias]
        else:
            masks = [attention_mask(padding_mask, attn_bias, x.dtype)] * len(self.blocks)
        for block, mask in zip(self.blocks, masks):
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                hidden.append(x)  # fairseq layer drop: the whole block is skipped for this batch
                results.append(None)
                continue
            x, h = block(x, mask)
            hidden.append(x)
            results.append(h)
        return x, tuple(hidden), tuple(results)
