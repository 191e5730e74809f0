"""The encoder contract shared by the speech, image and text encoders.

    out = encoder(x, mask=None, padding_mask=None)       # -> EncoderOutput (see transformer.py)

is split in two steps so that a teacher can reuse the student's front end (speech, as fairseq does):

    features, padding_mask = encoder.embed(x, padding_mask)      # CNN / patch embed / token embed
    out = encoder.forward_features(features, mask, padding_mask)  # mask, positions, blocks

Mask convention (one, everywhere): `mask: bool [B, T]`, True = masked (to be predicted), over the
feature grid (speech frames, image patches without the CLS token, text tokens).

Each encoder names its parameters by role in `groups`, which the EMA teacher uses to decide what it
averages and what it shares with the student:
    "front_end":  feature extractor (conv stack + projection / patch embedding / token embeddings)
    "positional": positional encoder (conv positions / relative position bias / learned positions)
"""
from __future__ import annotations

from torch import Tensor, nn

from .config import Data2VecConfig, EncoderConfig, ImageConfig, SpeechConfig, TextConfig
from .transformer import EncoderOutput


class Encoder(nn.Module):
    cfg: EncoderConfig
    groups: dict[str, tuple[str, ...]] = {}  # role -> parameter-name prefixes
    has_cls: bool = False  # True when the output has a CLS token in front of the feature grid

    def embed(self, x: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward_features(self, features: Tensor, mask: Tensor | None = None,
                         padding_mask: Tensor | None = None) -> EncoderOutput:
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> EncoderOutput:
        """x: modality input (see `embed`); mask: bool [B, T] over the feature grid. Returns EncoderOutput."""
        features, padding_mask = self.embed(x, padding_mask)
        return self.forward_features(features, mask, padding_mask)

    def group_of(self, name: str) -> str:
        """The role of a parameter ("front_end", "positional" or "context")."""
        for group, prefixes in self.groups.items():
            if any(name.startswith(p) for p in prefixes):
                return group
        return "context"

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_encoder(cfg: Data2VecConfig | EncoderConfig) -> Encoder:
    """The encoder for a config (a whole Data2VecConfig or just its encoder part)."""
    enc = cfg.encoder if isinstance(cfg, Data2VecConfig) else cfg
    if getattr(enc, "version", 1) == 2:  # data2vec 2.0 encoder configs (config_v2.py)
        from .encoders_v2 import build_encoder_v2
        return build_encoder_v2(enc)
    if isinstance(enc, SpeechConfig):
        from .modalities.speech import SpeechEncoder
        return SpeechEncoder(enc)
    if isinstance(enc, ImageConfig):
        from .modalities.image import ImageEncoder
        return ImageEncoder(enc)
    if isinstance(enc, TextConfig):
        from .modalities.text import TextEncoder
        return TextEncoder(enc)
    raise TypeError(f"no encoder for config type {type(enc).__name__}")
