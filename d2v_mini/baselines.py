"""Raw-input baselines: what a linear probe reaches without any encoder.

A pretrained encoder has two baselines to beat: a randomly initialised encoder of the same shape
(`evaluate.random_init_encoder`, same protocol) and the raw input itself, read by the same linear probe:

| modality | raw features of one example                                                      |
|----------|-----------------------------------------------------------------------------------|
| speech   | log-mel statistics: mean and std over time of 40 log-mel bands (25 ms / 10 ms)    |
| image    | the pixels, as the encoder sees them (eval transform), flattened                 |
| text     | bag of tokens: log(1 + count) of every token id, `<s>` / `</s>` / `<pad>` dropped |

    x = raw_features(task.train, task.collate_fn, task.modality, vocab_size=2048)   # [N, F]
"""
from __future__ import annotations

from typing import Callable

import torch
import torchaudio
from einops import rearrange, reduce
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

N_MELS = 40


def log_mel_stats(source: Tensor, padding_mask: Tensor | None = None, sample_rate: int = 16_000) -> Tensor:
    """source: float [B, N] waveforms; padding_mask: bool [B, N] (True = padding) -> [B, 2 * 40]:
    the mean and the standard deviation over the non-padded 10 ms frames of each log-mel band."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=400, hop_length=160, n_mels=N_MELS)
    x = torch.log(mel(source) + 1e-6)  # [B, M, F] with F = N // 160 + 1 frames
    frames = x.shape[-1]
    valid = torch.ones(source.shape[0], frames, dtype=torch.bool)
    if padding_mask is not None:
        lengths = (~padding_mask).sum(1)
        valid = torch.arange(frames)[None, :] < (lengths // 160 + 1)[:, None]
    w = rearrange(valid.float(), "b f -> b 1 f")
    n = reduce(w, "b 1 f -> b 1", "sum").clamp_min(1)
    mean = reduce(x * w, "b m f -> b m", "sum") / n
    var = reduce((x - rearrange(mean, "b m -> b m 1")).square() * w, "b m f -> b m", "sum") / n
    return torch.cat([mean, var.sqrt()], dim=1)


def bag_of_tokens(source: Tensor, vocab_size: int, special_ids: tuple[int, ...] = (0, 1, 2)) -> Tensor:
    """source: long [B, T] token ids -> float [B, vocab_size]: log(1 + count) of each id (specials dropped)."""
    if int(source.max()) >= vocab_size:
        raise ValueError(f"token id {int(source.max())} >= vocab_size {vocab_size}")
    counts = torch.zeros(source.shape[0], vocab_size)
    counts.scatter_add_(1, source, torch.ones_like(source, dtype=torch.float))
    counts[:, list(special_ids)] = 0
    return torch.log1p(counts)


@torch.no_grad()
def raw_features(dataset: Dataset, collate_fn: Callable | None, modality: str, *, vocab_size: int | None = None,
                 batch_size: int = 256) -> Tensor:
    """Raw-input features of every item of a labelled data set, in order: [N, F] (see the module table)."""
    feats = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
        x = batch["source"]
        if modality == "speech":
            feats.append(log_mel_stats(x, batch.get("padding_mask")))
        elif modality == "image":
            feats.append(rearrange(x.float(), "b c h w -> b (c h w)"))
        elif modality == "text":
            if vocab_size is None:
                raise ValueError("text needs vocab_size for the bag of tokens")
            feats.append(bag_of_tokens(x, vocab_size))
        else:
            raise ValueError(f"unknown modality {modality!r}: expected speech, image or text")
    if not feats:
        raise ValueError("the data set is empty")
    return torch.cat(feats)
