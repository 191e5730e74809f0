"""Masking: which positions the student does not see, for speech, images and text.

THE ONE MASK CONVENTION of d2v_mini
    mask: bool [B, T], True = masked (hidden from the student, predicted, counted in the loss),
                       False = visible.
    padding_mask: bool [B, T], True = padding (same polarity: True marks the "special" position).
For images T = H * W patches in row-major order (patch (i, j) is column i * W + j), no CLS token.
Integer masks are refused by `check_mask`: `x[mask.long()]` is a gather, not a selection, and `~` on
an integer tensor is a bitwise NOT (style-notebooks-pitfalls.md, D.2).

Three generators, one per modality (data2vec 1.0, see data2vec-recipes.md section 3):
    span_mask   speech: wav2vec 2.0 spans (fairseq `compute_mask_indices`, "static" lengths) ~49% masked
    block_mask  images: BEiT block masking, 120 of 196 patches in rectangles of >= 16 patches
    text_mask   text:   fairseq `MaskTokensDataset` (BERT 80/10/10 rule, optional spans of tokens)

Everything random comes from `torch` with an explicit CPU `torch.Generator`, so a seed fixes the
mask. Masks are built on the CPU (they are cheap) and moved to `device` at the end.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange

__all__ = ["check_mask", "span_mask", "block_mask", "TextMask", "text_mask", "mask_ratio"]


def check_mask(mask, shape=None, name: str = "mask") -> torch.Tensor:
    """Validate a mask at the place it is consumed and return it unchanged.

    mask: bool [B, T], True = masked. shape: the expected (B, T), or None to accept any 2-D shape.
    Raises TypeError if `mask` is not a bool tensor, ValueError if it is not 2-D or has the wrong shape.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else f"type {type(mask).__name__}"
        meaning = "True = padding" if "padding" in name else "True = masked"
        raise TypeError(f"{name} must be a bool tensor [B, T] with {meaning}, got {got}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, T], got shape {tuple(mask.shape)}")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask


def mask_ratio(mask: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of the non-padded positions that are masked, per row.

    mask: bool [B, T]; padding_mask: bool [B, T] (True = padding) or None  ->  float [B].
    """
    check_mask(mask)
    valid = torch.ones_like(mask) if padding_mask is None else ~check_mask(padding_mask, mask.shape, "padding_mask")
    return (mask & valid).sum(-1).float() / valid.sum(-1).clamp(min=1).float()


# ----------------------------------------------------------------------------- shared helpers
def _choose(allowed: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per row, pick min(k, #allowed) of the `allowed` positions uniformly, without replacement.

    allowed: bool [B, N]; k: long [B]  ->  bool [B, N] (a subset of `allowed`).
    Trick: give every position a random score, push the disallowed ones to the end, and keep the
    positions whose rank in that random order is below k.
    """
    scores = torch.rand(allowed.shape, generator=generator).masked_fill(~allowed, 2.0)
    ranks = scores.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)
    return (ranks < rearrange(k, "b -> b 1")) & allowed


def _extend(starts: torch.Tensor, length: int) -> torch.Tensor:
    """Turn span starts into spans: position t is covered if a span starts in [t - length + 1, t].

    starts: bool [B, N]  ->  bool [B, N]. Spans running past the end are cut at N.
    """
    spans = starts.clone()
    for offset in range(1, length):
        spans[:, offset:] |= starts[:, :-offset]
    return spans


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    """One float drawn uniformly between `low` and `high` (also works when low > high, like random.uniform)."""
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """One integer drawn uniformly from [low, high], both ends included (like random.randint)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


# ----------------------------------------------------------------------------- speech: spans
def span_mask(shape: tuple[int, int], *, prob: float = 0.65, length: int = 10,
              padding_mask: torch.Tensor | None = None, min_masks: int = 1,
              require_same_masks: bool = True, generator: torch.Generator | None = None,
              device=None) -> torch.Tensor:
    """wav2vec 2.0 / data2vec speech span masking (fairseq `compute_mask_indices`, static lengths).

    shape: (B, T) frames; padding_mask: bool [B, T], True = padding  ->  mask: bool [B, T].

    Per row, with sz = number of non-padded frames:
      1. num_spans = int(prob * sz / length + U[0, 1))  (probabilistic rounding), at least `min_masks`.
         Without a padding mask fairseq draws this once for the whole batch; so do we.
      2. Span starts are drawn without replacement from [0, sz - length) (fairseq's
         `np.random.choice(sz - length, num_spans)`); if fewer than num_spans + 1 starts would be
         available, the range becomes [0, num_spans + 1), fairseq's `min_len` fix-up.
      3. Each start covers `length` frames; spans may overlap (union) and are cut at sz.
         prob = 0.65 and length = 10 give about 1 - (1 - 0.065) ** 10 = 49% masked frames.
      4. require_same_masks: every row is subsampled (random frames unmasked) down to the smallest
         count in the batch, so all rows have exactly the same number of True (fairseq's default).
    The spans are laid over the valid frames in order, so padded frames are never masked, whether the
    padding is at the end (fairseq's assumption) or anywhere else.
    """
    B, T = shape
    if not 0.0 <= prob <= 1.0 or length < 1:
        raise ValueError(f"need 0 <= prob <= 1 and length >= 1, got prob={prob}, length={length}")
    if padding_mask is None:
        valid = torch.ones(B, T, dtype=torch.bool)
        u = torch.rand(1, generator=generator).expand(B)  # one rounding draw for the batch
    else:
        valid = ~check_mask(padding_mask, (B, T), "padding_mask").cpu()
        u = torch.rand(B, generator=generator)  # one rounding draw per row
    sz = valid.sum(-1)  # long [B]

    num_spans = (prob * sz / length + u).floor().long().clamp(min=min_masks)
    num_starts = torch.where(sz - length > num_spans, sz - length, num_spans + 1)  # size of the start range
    width = max(T, int(num_starts.max()))
    col = rearrange(torch.arange(width), "n -> 1 n")
    starts = _choose(col < rearrange(num_starts, "b -> b 1"), num_spans, generator)
    spans = _extend(starts, length)[:, :T] & (col[:, :T] < rearrange(sz, "b -> b 1"))  # in "valid-frame" index

    # place the k-th valid-frame index on the k-th non-padded frame of the row
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[valid] = spans[col[:, :T] < rearrange(sz, "b -> b 1")]

    if require_same_masks:
        fewest = mask.sum(-1).min()
        mask = _choose(mask, fewest.expand(B), generator)
    return mask.to(device)


# ----------------------------------------------------------------------------- images: blocks
def _add_block(grid: torch.Tensor, budget: int, min_block: int, log_aspect: tuple[float, float],
               generator: torch.Generator | None) -> int:
    """Try (up to 10 times) to mask one rectangle of `grid` that adds between 1 and `budget` new patches.

    grid: bool [H, W], modified in place. Returns the number of newly masked patches (0 = failed).
    """
    H, W = grid.shape
    for _ in range(10):
        area = _uniform(min_block, budget, generator)
        aspect = math.exp(_uniform(*log_aspect, generator))  # log-uniform height / width
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if h < H and w < W:  # BEiT keeps every block strictly smaller than the grid
            top, left = _randint(0, H - h, generator), _randint(0, W - w, generator)
            window = grid[top:top + h, left:left + w]  # a view: filling it fills `grid`
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window.fill_(True)
                return new
    return 0


def block_mask(batch_size: int, grid: tuple[int, int], *, num_patches: int = 120, min_block: int = 16,
               max_block: int | None = None, min_aspect: float = 0.3, max_aspect: float | None = None,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """BEiT block masking (data2vec vision, BEiT `MaskingGenerator`), one independent mask per image.

    grid: (H, W) patches  ->  mask: bool [B, H * W], patches in row-major order.

    Per image, rectangles are added until `num_patches` patches are masked:
      - area target ~ U[min_block, budget], budget = min(num_patches - masked so far, max_block);
        near the end budget < min_block, and the draw falls in [budget, min_block] (BEiT does the same),
        so the last rectangles overlap the mask and top it up to the exact count;
      - aspect ratio (h / w) log-uniform in [min_aspect, max_aspect or 1 / min_aspect];
      - a rectangle is accepted if it adds between 1 and `budget` new patches; up to 10 tries per rectangle.
    It stops early only if 10 tries in a row fail, so a row may hold fewer than `num_patches` when
    the grid makes the count hard to reach; it never holds more. Default: 120 / 196 for a 14 x 14 grid.
    """
    H, W = grid
    if not 0 <= num_patches <= H * W:
        raise ValueError(f"num_patches must be in [0, {H * W}] for a {H}x{W} grid, got {num_patches}")
    max_block = num_patches if max_block is None else max_block
    log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

    masks = []
    for _ in range(batch_size):
        image_mask = torch.zeros(H, W, dtype=torch.bool)
        count = 0
        while count < num_patches:
            added = _add_block(image_mask, min(num_patches - count, max_block), min_block, log_aspect, generator)
            if added == 0:
                break
            count += added
        masks.append(image_mask)
    mask = rearrange(torch.stack(masks), "b h w -> b (h w)")
    return mask.to(device)


# ----------------------------------------------------------------------------- text: BERT rule
class TextMask(NamedTuple):
    """The result of `text_mask`. All three are [B, T] and live on the device of the input tokens."""

    tokens: torch.Tensor    # long [B, T]: the student's (corrupted) input
    mask: torch.Tensor      # bool [B, T]: every selected position (now <mask>, random, or unchanged)
    replaced: torch.Tensor  # bool [B, T]: positions whose input is now <mask> (a subset of `mask`)


def text_mask(tokens: torch.Tensor, *, mask_idx: int, vocab_size: int, prob: float = 0.15, length: int = 1,
              random_token_prob: float = 0.1, leave_unmasked_prob: float = 0.1,
              special_ids: tuple[int, ...] = (0, 1, 2), pad_idx: int = 1, num_special: int = 4,
              generator: torch.Generator | None = None) -> TextMask:
    """Masked-LM corruption (fairseq `MaskTokensDataset` semantics), row by row.

    tokens: long [B, T]  ->  TextMask(tokens: long [B, T], mask: bool [B, T], replaced: bool [B, T]).

    Maskable positions: token not in `special_ids` and not `pad_idx`; n = their number in the row.
      - length == 1: select exactly int(prob * n + U[0, 1)) maskable positions, uniformly.
      - length > 1 (fairseq `mask_multiple_length`, data2vec's released 0.35 / 4): draw
        int(prob * n / length + U[0, 1)) span starts among the maskable positions, without replacement;
        each covers `length` consecutive positions, dropping any that run onto a special token,
        padding, or past the row end. Overlaps make the ratio a bit below `prob`.
    Each selected position then keeps its token with prob `leave_unmasked_prob`, gets a uniformly
    random id from [num_special, vocab_size) other than `mask_idx` with prob `random_token_prob`, and
    becomes `mask_idx` otherwise (BERT 80/10/10 with 0.1 / 0.1; data2vec's released config uses 0 / 0).
    Differences from fairseq: fairseq counts <s> and </s> in n and may select them, and its random
    ids may equal <mask>; here specials are never selected and random ids are never <mask>.
    Random ids are drawn from [num_special, vocab_size), so all `special_ids` should be < num_special.
    """
    if tokens.dtype != torch.long or tokens.dim() != 2:
        raise TypeError(f"tokens must be a long tensor [B, T], got {tokens.dtype} of shape {tuple(tokens.shape)}")
    if length < 1 or random_token_prob + leave_unmasked_prob > 1.0:
        raise ValueError("need length >= 1 and random_token_prob + leave_unmasked_prob <= 1")
    device, tokens = tokens.device, tokens.cpu()
    B, T = tokens.shape

    maskable = ~torch.isin(tokens, torch.tensor(special_ids, dtype=torch.long)) & (tokens != pad_idx)
    n = maskable.sum(-1)  # long [B]
    u = torch.rand(B, generator=generator)
    if length == 1:
        mask = _choose(maskable, (prob * n + u).floor().long(), generator)
    else:
        starts = _choose(maskable, (prob * n / length + u).floor().long(), generator)
        mask = _extend(starts, length) & maskable

    # BERT rule: one uniform draw per position splits the selection into keep / random / <mask>
    r = torch.rand(B, T, generator=generator)
    keep = mask & (r < leave_unmasked_prob)
    rand = mask & ~keep & (r < leave_unmasked_prob + random_token_prob)
    replaced = mask & ~keep & ~rand

    if num_special <= mask_idx < vocab_size:  # draw from the range without mask_idx, then skip over it
        random_ids = torch.randint(num_special, vocab_size - 1, (B, T), generator=generator)
        random_ids = random_ids + (random_ids >= mask_idx).long()
    else:
        random_ids = torch.randint(num_special, vocab_size, (B, T), generator=generator)
    corrupted = torch.where(rand, random_ids, tokens).masked_fill(replaced, mask_idx)
    return TextMask(corrupted.to(device), mask.to(device), replaced.to(device))
