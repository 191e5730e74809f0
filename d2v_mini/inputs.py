"""Model inputs checked at the entry of `Data2Vec` (before masking), with messages that say how to fix them.

    source, padding_mask = check_source("speech", wav, padding_mask, dtype=torch.float32)

| modality | source                          | dtype                                   | padding_mask               |
|----------|---------------------------------|-----------------------------------------|----------------------------|
| speech   | waveform [B, N]                 | any float, cast to the weights' dtype   | bool [B, N], right padding |
| image    | images [B, C, H, W]             | any float, cast to the weights' dtype   | None                       |
| text     | token ids [B, T]                | any integer, cast to long               | bool [B, T]                |

Float inputs (float64 from numpy, float16, bfloat16) are cast to the weights' dtype (float32 unless
the model was converted): mixed precision is autocast's job (`TrainOptions.precision`), and a cast is
exact or loses only digits the model never resolves. Rejected, with the fix in the message: a batch
axis missing (1-D speech, 3-D images) or a channel axis too many (speech [B, 1, N]), integer audio or
pixels, an empty batch, NaN or Inf values, speech padded on the left (the frame lengths assume
padding at the end), a row that is all padding (it would leave the whole batch without masks under
`require_same_masks`, and its attention has no key). The NaN / padding checks read the data: on a
GPU that is one synchronisation per call, like the boolean indexing of the masked positions.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .errors import InputError
from .masking import check_mask


def _got(x) -> str:
    return f"{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else type(x).__name__


def check_source(modality: str, source, padding_mask=None, dtype: torch.dtype = torch.float32,
                 pad_idx: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Validate (and cast, see the module docstring) a batch for `modality`; returns (source, padding_mask).
    source: [B, N] / [B, C, H, W] / [B, T]; padding_mask: bool [B, N] or [B, T] (True = padding) or None;
    pad_idx: text, the id whose positions are padding when no padding_mask is given."""
    if not torch.is_tensor(source):
        raise InputError(f"{modality} source must be a torch tensor, got {type(source).__name__}: "
                         f"convert it with torch.as_tensor")
    if modality == "speech":
        if source.ndim == 1:
            raise InputError(f"speech source must be a batch of waveforms [B, N], got one waveform {_got(source)}: "
                             f"add the batch axis, wav[None] or rearrange(wav, 'n -> 1 n')")
        if source.ndim == 3:
            fix = ("drop the channel axis, rearrange(x, 'b 1 n -> b n')" if source.shape[1] == 1 else
                   "downmix the channels, reduce(x, 'b c n -> b n', 'mean')")
            raise InputError(f"speech source must be [B, N] (batch, samples), got {_got(source)}: {fix}")
        if source.ndim != 2:
            raise InputError(f"speech source must be a float waveform [B, N] (batch, samples), got {_got(source)}")
    elif modality == "image":
        if source.ndim == 3:
            raise InputError(f"image source must be a batch [B, C, H, W], got one image {_got(source)}: "
                             f"add the batch axis, x[None]")
        if source.ndim != 4:
            raise InputError(f"image source must be float [B, C, H, W] (batch, channels, height, width), "
                             f"got {_got(source)}")
    else:
        if source.ndim == 1:
            raise InputError(f"text source must be token ids [B, T], got one sequence {_got(source)}: "
                             f"add the batch axis, ids[None]")
        if source.ndim != 2:
            raise InputError(f"text source must be token ids, an integer tensor [B, T], got {_got(source)}")
    if source.shape[0] == 0:
        why = " (AudioCollator drops clips shorter than the conv front end's minimum)" if modality == "speech" else ""
        raise InputError(f"empty batch: {modality} source has shape {tuple(source.shape)} (B = 0): pass at least "
                         f"one example; was every item filtered out{why}?")

    if modality == "text":
        if source.is_floating_point() or source.is_complex() or source.dtype == torch.bool:
            raise InputError(f"text source must be integer token ids, got {source.dtype}: tokenize the text "
                             f"(pipeline.tokenizer_for(cfg).encode) and pass a long tensor")
        source = source.long()
    else:
        if not source.is_floating_point():
            what = "integer PCM: scale to [-1, 1], e.g. x.float() / 32768" if modality == "speech" else \
                "integer pixels: use pretrain_transform / eval_transform (ToTensor + Normalize)"
            raise InputError(f"{modality} source must be floating point, got {source.dtype} ({what})")
        source = source.to(dtype)
        bad = ~torch.isfinite(source)
        if bad.any():
            rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
            raise InputError(f"{modality} source holds {int(bad.sum())} NaN/Inf value(s), in batch row(s) "
                             f"{rows[:8]}: check the data (a damaged file?) and its normalisation")

    pm = None
    if padding_mask is not None:
        pm = check_mask(padding_mask, tuple(source.shape[:2]), name="padding_mask")
        if modality == "speech" and (pm[:, 1:] < pm[:, :-1]).any():  # False after True: padding before samples
            rows = (pm[:, 1:] < pm[:, :-1]).any(1).nonzero().flatten().tolist()
            raise InputError(f"padding_mask rows {rows[:8]} have padding before samples (left padding?): speech "
                             f"padding must be at the end of each row, True = padding (as AudioCollator pads)")
    elif modality == "text" and pad_idx is not None:
        pm = source.eq(pad_idx)  # the text encoder's default padding mask
    if pm is not None and modality != "image" and pm.all(1).any():
        raise InputError(f"batch row(s) {pm.all(1).nonzero().flatten().tolist()[:8]} are all padding: drop empty "
                         f"examples from the batch (a row without content has nothing to mask or attend to)")
    return source, padding_mask
