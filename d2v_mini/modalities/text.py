"""Text encoder: the RoBERTa encoder used by data2vec 1.0 text.

    tokens [B, T] --token embedding + learned positions (offset by pad + 1)--> LayerNorm --> dropout
                  --> post-LN blocks

Masking happens on the tokens (BERT's rule replaces, randomises or keeps the selected tokens), so
`encoder(tokens, mask)` puts `<mask>` at every masked position; the 80/10/10 rule is applied by
`masking.text_mask` before the encoder, and the corrupted tokens are passed with `mask=None`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import TextConfig
from ..encoder import Encoder
from ..init import check_init, init_text
from ..masking import check_mask
from ..transformer import EncoderOutput, Transformer


class TextEncoder(Encoder):
    groups = {"front_end": ("tokens.", "emb_norm."), "positional": ("positions.",)}

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_idx)
        self.positions = nn.Embedding(cfg.max_positions, cfg.dim, padding_idx=cfg.pad_idx)
        self.emb_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg)
        for emb in (self.tokens, self.positions):  # BERT init: N(0, 0.02), zero padding row
            nn.init.normal_(emb.weight, std=0.02)
            emb.weight.data[cfg.pad_idx].zero_()
        if check_init(cfg.init) == "released":  # init_bert_params on every Linear and Embedding
            init_text(self)

    @property
    def max_tokens(self) -> int:
        return self.cfg.max_positions - self.cfg.pad_idx - 1

    def check_tokens(self, x: Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 2 or x.dtype != torch.long:
            got = f"{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"text input must be token ids, a long tensor [B, T] (batch, tokens), got {got}")
        if x.shape[1] > self.max_tokens:
            raise ValueError(f"sequence of {x.shape[1]} tokens is longer than the {self.max_tokens} positions "
                             f"this encoder has (max_positions {self.cfg.max_positions} - pad_idx - 1)")
        if x.numel() and (x.min() < 0 or x.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size}), got min {int(x.min())}, "
                             f"max {int(x.max())}: is the tokenizer's vocabulary larger than cfg.vocab_size?")

    def forward(self, x: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> EncoderOutput:
        """x: token ids long [B, T]; mask: bool [B, T], True = replace the token with `<mask>`."""
        if mask is not None:
            self.check_tokens(x)
            x = x.masked_fill(check_mask(mask, tuple(x.shape)), self.cfg.mask_idx)
        features, padding_mask = self.embed(x, padding_mask)
        return self.forward_features(features, None, padding_mask)

    def embed(self, x: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x: token ids long [B, T]; padding_mask: bool [B, T] (default: x == pad_idx).

        Returns embeddings [B, T, D] and the padding mask (None when nothing is padded)."""
        self.check_tokens(x)
        if padding_mask is None:
            padding_mask = x.eq(self.cfg.pad_idx)
        check_mask(padding_mask, tuple(x.shape), name="padding_mask")
        keep = (~padding_mask).long()
        positions = torch.cumsum(keep, dim=1) * keep + self.cfg.pad_idx  # RoBERTa: first real token -> pad + 1
        e = self.tokens(x)
        if self.positions is not None:  # None: a 2.0 encoder without absolute positions (TextConfig2)
            e = e + self.positions(positions)
        return self.dropout(self.emb_norm(e)), (padding_mask if padding_mask.any() else None)

    def forward_features(self, features: Tensor, mask: Tensor | None = None,
                         padding_mask: Tensor | None = None) -> EncoderOutput:
        """features: embeddings [B, T, D]. Text masks tokens before embedding, so `mask` must be None."""
        assert mask is None, "text masking happens on the tokens: call encoder(tokens, mask) instead"
        x, hidden, results = self.transformer(features, padding_mask)
        return EncoderOutput(x, hidden, results, padding_mask)
