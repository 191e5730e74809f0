"""Speech encoder: the wav2vec 2.0 front end used by data2vec 1.0.

    waveform [B, N] --7 conv layers (LN, GELU, no bias)--> [B, T, 512]   (20 ms hop at 16 kHz)
                    --LayerNorm + Linear--> features [B, T, D]
    features --mask_emb at masked frames--> + ConvPositions(x) --> LayerNorm --> post-LN blocks
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..config import SpeechConfig
from ..encoder import Encoder
from ..init import check_init, init_speech
from ..masking import check_mask
from ..transformer import EncoderOutput, Transformer


class ConvLayer(nn.Module):
    """Conv1d -> LayerNorm over channels -> GELU (fairseq `extractor_mode: layer_norm`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C_in, N] -> [B, C_out, N']"""
        x = rearrange(self.conv(x), "b c t -> b t c")
        return rearrange(F.gelu(self.norm(x)), "b t c -> b c t")


class ConvFeatureEncoder(nn.Module):
    """The 7-layer conv feature encoder: waveform [B, N] -> frames [B, T, C]."""

    def __init__(self, layers: tuple[tuple[int, int, int], ...], bias: bool = False):
        super().__init__()
        self.layers_spec = layers
        c_in = 1
        convs = []
        for c, k, s in layers:
            convs.append(ConvLayer(c_in, c, k, s, bias))
            c_in = c
        self.layers = nn.ModuleList(convs)

    def output_length(self, n: Tensor | int) -> Tensor | int:
        """Number of frames for `n` input samples: floor((n - k) / s) + 1 per layer."""
        for _, k, s in self.layers_spec:
            n = (n - k) // s + 1
        return n

    def min_samples(self) -> int:
        """The shortest input that yields one frame (400 samples = 25 ms for the standard stack)."""
        n = 1
        for _, k, s in reversed(self.layers_spec):
            n = (n - 1) * s + k
        return n

    def forward(self, wav: Tensor) -> Tensor:
        """wav: [B, N] -> [B, T, C]"""
        x = rearrange(wav, "b n -> b 1 n")
        for layer in self.layers:
            x = layer(x)
        return rearrange(x, "b c t -> b t c")


class ConvPositions(nn.Module):
    """data2vec's convolutional positional encoder: `depth` x [Conv1d(k, groups) -> LN(no affine) -> GELU]."""

    def __init__(self, dim: int, depth: int, kernel: int, groups: int):
        super().__init__()
        self.kernel = kernel
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, D] -> [B, T, D] (the positional term that is added to x)."""
        x = rearrange(x, "b t d -> b d t")
        for conv in self.convs:
            x = conv(x)
            if self.kernel % 2 == 0:  # an even kernel with padding k//2 yields one extra frame
                x = x[..., :-1]
            x = rearrange(x, "b d t -> b t d")
            x = F.gelu(F.layer_norm(x, x.shape[-1:]))
            x = rearrange(x, "b t d -> b d t")
        return rearrange(x, "b d t -> b t d")


class SpeechEncoder(Encoder):
    groups = {"front_end": ("feature_encoder.", "feature_norm.", "feature_proj."), "positional": ("pos_conv.",)}

    def __init__(self, cfg: SpeechConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.conv_layers[-1][0]
        self.feature_encoder = ConvFeatureEncoder(cfg.conv_layers, cfg.conv_bias)
        self.feature_norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.feature_proj = nn.Linear(c, cfg.dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.rand(cfg.dim))  # fairseq: uniform [0, 1)
        self.pos_conv = ConvPositions(cfg.dim, cfg.conv_pos_layers, cfg.conv_pos_kernel, cfg.conv_pos_groups)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg)
        if check_init(cfg.init) == "released":  # fairseq: kaiming-normal CNN, init_bert_params in the blocks
            init_speech(self)

    def embed(self, x: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x: float waveform [B, N] at `cfg.sample_rate`; padding_mask: bool [B, N], True = padded sample.

        Returns features [B, T, D] (before masking) and the frame padding mask bool [B, T] (or None)."""
        if not torch.is_tensor(x) or x.ndim != 2 or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"speech input must be a float waveform [B, N] (batch, samples) at "
                             f"{self.cfg.sample_rate} Hz, got {got}")
        need = self.feature_encoder.min_samples()
        if x.shape[1] < need:
            raise ValueError(f"audio too short: {x.shape[1]} samples, but the conv feature encoder needs at least "
                             f"{need} samples ({1000 * need / self.cfg.sample_rate:.0f} ms at {self.cfg.sample_rate} Hz)")
        frames = self.feature_encoder(x)
        features = self.dropout_input(self.feature_proj(self.feature_norm(frames)))
        frame_mask = None
        if padding_mask is not None:
            check_mask(padding_mask, tuple(x.shape), name="padding_mask")
            lengths = self.feature_encoder.output_length((~padding_mask).sum(1))
            frame_mask = torch.arange(features.shape[1], device=x.device)[None, :] >= lengths[:, None]
            frame_mask = frame_mask if frame_mask.any() else None
        return features, frame_mask

    def forward_features(self, features: Tensor, mask: Tensor | None = None,
                         padding_mask: Tensor | None = None) -> EncoderOutput:
        """features: [B, T, D]; mask, padding_mask: bool [B, T]. Returns EncoderOutput over the T frames."""
        x = features
        if mask is not None:
            check_mask(mask, tuple(x.shape[:2]))
            x = torch.where(rearrange(mask, "b t -> b t 1"), self.mask_emb.to(x.dtype), x)
        if padding_mask is not None:
            x = x.masked_fill(rearrange(padding_mask, "b t -> b t 1"), 0.0)  # pads must not leak into pos conv
        x = self.dropout(self.norm(x + self.pos_conv(x)))
        x, hidden, results = self.transformer(x, padding_mask)
        return EncoderOutput(x, hidden, results, padding_mask)
