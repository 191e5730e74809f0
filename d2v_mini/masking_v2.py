"""The data2vec 2.0 masks: every row masks exactly the same number of positions, because the student
drops the masked positions and encodes the visible ones as one dense [B, K, D] batch.

    block_mask_1d          speech (fairseq compute_block_mask_1d): int(T (p + adjust) / L) block centres drawn
                           with replacement, each masks centre - L//2 .. centre + L//2 (clamped), then
                           random frames are unmasked / masked to exactly int(T p) per row.
    inverse_block_mask_2d  images (compute_block_mask_2d, inverse_mask): the same on the H x W grid with
                           L x L *kept* blocks and keep-prob 1 - p, fixed up to exactly int(T (1 - p)) kept.
                           Base: p 0.8, adjust 0.07, L 3 on 14 x 14: 5 centres, 39 kept, 157 masked.
    random_mask            text (MAE random_masking): exactly T - int(T (1 - p)) random positions masked.
    keep_indices           the kept positions of each row in order, and the inverse permutation.

Same convention as masking.py: mask bool [B, T], True = masked. Masks are built on the CPU with an
explicit generator (a seed fixes them) and moved to `device`.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from .masking import _choose, check_mask

__all__ = ["block_mask_1d", "inverse_block_mask_2d", "random_mask", "keep_indices", "fix_count"]


def fix_count(mask: Tensor, target: int, generator: torch.Generator | None = None) -> Tensor:
    """Unmask random masked positions or mask random visible ones until every row has exactly `target`
    True (fairseq's require_same_masks fix-up). mask: bool [B, T] -> bool [B, T]."""
    n = mask.sum(-1)
    over = _choose(mask, (n - target).clamp_min(0), generator)  # to unmask
    under = _choose(~mask, (target - n).clamp_min(0), generator)  # to mask
    return (mask & ~over) | under


def _centres(batch: int, positions: int, count: int, generator) -> Tensor:
    """bool [B, positions]: `count` centres per row drawn uniformly with replacement (duplicates merge)."""
    centres = torch.zeros(batch, positions, dtype=torch.bool)
    if count > 0:
        idx = torch.randint(0, positions, (batch, count), generator=generator)
        centres.scatter_(1, idx, True)
    return centres


def block_mask_1d(batch: int, length: int, *, prob: float = 0.5, block: int = 5, adjust: float = 0.05,
                  generator: torch.Generator | None = None, device=None) -> Tensor:
    """Speech 2.0 blocks over `length` frames -> bool [B, length] with exactly int(length * prob) True per row."""
    if not 0.0 <= prob < 1.0 or block < 1:
        raise ValueError(f"need 0 <= prob < 1 and block >= 1, got prob={prob}, block={block}")
    centres = _centres(batch, length, int(length * (prob + adjust) / block), generator)
    b, c = centres.nonzero(as_tuple=True)
    mask = torch.zeros_like(centres)
    for k in range(block):  # offsets -block//2 .. block - 1 - block//2, clamped at both ends
        mask[b, (c + k - block // 2).clamp(0, length - 1)] = True
    return fix_count(mask, int(length * prob), generator).to(device)


def inverse_block_mask_2d(batch: int, grid: tuple[int, int], *, prob: float = 0.8, block: int = 3,
                          adjust: float = 0.07, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Images 2.0: kept `block` x `block` squares on an (H, W) grid -> mask bool [B, H * W] (row-major)
    with exactly int(H * W * (1 - prob)) False (kept) per row."""
    H, W = grid
    if not 0.0 < prob < 1.0 or block < 1:
        raise ValueError(f"need 0 < prob < 1 and block >= 1, got prob={prob}, block={block}")
    keep_prob = 1.0 - prob
    n = H * W
    centres = rearrange(_centres(batch, n, int(n * (keep_prob + adjust) / block ** 2), generator),
                        "b (h w) -> b h w", h=H)
    b, r, c = centres.nonzero(as_tuple=True)
    kept = torch.zeros(batch, H, W, dtype=torch.bool)
    for i in range(block):
        for j in range(block):
            kept[b, (r + i - block // 2).clamp(0, H - 1), (c + j - block // 2).clamp(0, W - 1)] = True
    kept = fix_count(rearrange(kept, "b h w -> b (h w)"), int(n * keep_prob), generator)
    return (~kept).to(device)


def random_mask(batch: int, length: int, *, prob: float = 0.48, generator: torch.Generator | None = None,
                device=None) -> Tensor:
    """Text 2.0 (MAE random_masking): keep exactly int(length * (1 - prob)) random positions per row.
    Returns mask bool [B, length]."""
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"need 0 <= prob < 1, got {prob}")
    keep = int(length * (1 - prob))
    kept = _choose(torch.ones(batch, length, dtype=torch.bool), torch.full((batch,), keep), generator)
    return (~kept).to(device)


def keep_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """mask: bool [B, T] with the same number of False (kept) in every row.

    Returns ids_keep long [B, K] (the kept positions of each row, in increasing order) and ids_restore
    long [B, T] (the inverse of the permutation "kept first, then masked", fairseq/MAE `ids_restore`)."""
    check_mask(mask)
    kept = (~mask).sum(-1)
    if mask.shape[0] and not bool((kept == kept[0]).all()):
        raise ValueError(f"data2vec 2.0 needs the same number of visible positions in every row (the student "
                         f"encodes them as one dense batch), got {sorted(set(kept.tolist()))}: draw masks with "
                         f"d2v_mini.masking_v2 or fix the counts with masking_v2.fix_count")
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # kept first, each group in order
    k = int(kept[0]) if mask.shape[0] else 0
    return order[:, :k], torch.argsort(order, dim=1)
