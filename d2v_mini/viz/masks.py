"""Pictures of the three masking schemes on real examples (notebook 01).

    runs = mask_runs(mask[0])                                  # [(start, stop), ...] masked spans
    plot_spectrogram_mask(spec, mask[0], hop_ms=10, frame_ms=20)   # speech: shaded spans
    img = masked_image(image, mask[0], grid=(14, 14))          # images: masked patches greyed out
    plot_tokens(pieces, kinds)                                 # text: <mask> / random / kept tokens
    ratios = sample_ratios(lambda g: span_mask((8, 500), generator=g), n=200)   # measured mask ratios
    plot_ratio_hist(ratios, paper=0.49)

Mask convention (masking.py): bool [B, T] or [T], True = masked. Image masks are over patches in
row-major order (patch (i, j) is column i * W + j), without the CLS token.
"""
from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor

from ..masking import check_mask, mask_ratio

GREY = 0.5  # the value a greyed-out patch gets (images in [0, 1])
TOKEN_COLORS = {"visible": "#ffffff", "mask": "#f4a582", "random": "#92c5de", "kept": "#d9f0a3"}
TOKEN_LABELS = {"mask": "replaced by <mask>", "random": "random token", "kept": "selected, kept unchanged"}


def _row(mask: Tensor) -> Tensor:
    """A 1-D mask [T] from [T] or [1, T] (bool, True = masked)."""
    if mask.ndim == 2 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 1:
        raise ValueError(f"expected one row of a mask, bool [T] (or [1, T]), got shape {tuple(mask.shape)}")
    check_mask(rearrange(mask, "t -> 1 t"))
    return mask


def mask_runs(mask: Tensor) -> list[tuple[int, int]]:
    """The masked spans of one row as [start, stop) pairs. mask: bool [T] (True = masked)."""
    m = _row(mask).cpu().to(torch.int8)
    edges = torch.diff(torch.cat([m.new_zeros(1), m, m.new_zeros(1)]))
    starts, stops = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def plot_spectrogram_mask(spec: Tensor, mask: Tensor, *, hop_ms: float = 10.0, frame_ms: float = 20.0,
                          ax=None, title: str | None = None):
    """A (log-mel) spectrogram with the masked encoder frames shaded.

    spec: [F, S] (mel bins x spectrogram frames, `hop_ms` apart); mask: bool [T] over the encoder's
    frames (`frame_ms` apart: 20 ms for the wav2vec 2.0 feature encoder). Returns the Axes."""
    if spec.ndim != 2:
        raise ValueError(f"spec must be [F, S] (mel bins, spectrogram frames), got shape {tuple(spec.shape)}")
    runs = mask_runs(mask)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2.6))
    seconds = spec.shape[1] * hop_ms / 1000
    ax.imshow(spec.cpu().numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, spec.shape[0]))
    for start, stop in runs:
        ax.axvspan(start * frame_ms / 1000, stop * frame_ms / 1000, color="white", alpha=0.45, linewidth=0)
        ax.axvline(start * frame_ms / 1000, color="white", linewidth=0.6)
    ratio = float(_row(mask).float().mean())
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    ax.set_title(title or f"{len(runs)} masked spans, {100 * ratio:.0f}% of the {mask.shape[-1]} frames")
    return ax


def patch_grid(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """A patch mask on its grid. mask: bool [B, H*W] or [H*W] (row-major) -> bool [B, H, W] or [H, W]."""
    h, w = grid
    if mask.shape[-1] != h * w:
        raise ValueError(f"mask has {mask.shape[-1]} patches, a {h}x{w} grid has {h * w}")
    if mask.ndim == 1:
        return rearrange(_row(mask), "(h w) -> h w", h=h, w=w)
    return rearrange(check_mask(mask), "b (h w) -> b h w", h=h, w=w)


def masked_image(image: Tensor, mask: Tensor, grid: tuple[int, int], grey: float = GREY) -> np.ndarray:
    """An image with its masked patches greyed out, ready for `imshow`.

    image: [C, H, W] (any range: min-max scaled to [0, 1]; C = 1 or 3); mask: bool [h*w] over the
    patches (row-major, True = masked); grid: (h, w) with H = h * ph and W = w * pw.
    Returns float [H, W, 3] in [0, 1]; masked pixels are `grey`."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [C, H, W] with C = 1 or 3, got shape {tuple(image.shape)}")
    c, H, W = image.shape
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"a {H}x{W} image cannot be cut into a {h}x{w} patch grid")
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
    img = repeat(img, "1 y x -> 3 y x") if c == 1 else img
    cover = repeat(patch_grid(mask.cpu(), grid).float(), "h w -> (h ph) (w pw)", ph=H // h, pw=W // w)
    out = img * (1 - cover) + grey * cover
    return rearrange(out, "c y x -> y x c").numpy()


def show_masked_image(image: Tensor, mask: Tensor, grid: tuple[int, int], ax=None, title: str | None = None,
                      lines: bool = True):
    """`imshow` of `masked_image` with the patch grid drawn. image: [C, H, W]; mask: bool [h*w]. Returns the Axes."""
    img = masked_image(image, mask, grid)
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(img, interpolation="nearest")
    H, W = img.shape[:2]
    if lines:
        for i in range(1, grid[0]):
            ax.axhline(i * H / grid[0] - 0.5, color="white", linewidth=0.3)
        for j in range(1, grid[1]):
            ax.axvline(j * W / grid[1] - 0.5, color="white", linewidth=0.3)
    n = int(mask.sum())
    ax.set_title(title or f"{n}/{grid[0] * grid[1]} patches masked ({100 * n / (grid[0] * grid[1]):.0f}%)",
                 fontsize="small")
    ax.set_xticks([]), ax.set_yticks([])
    return ax


def token_kinds(mask: Tensor, replaced: Tensor, original: Tensor, corrupted: Tensor) -> list[str]:
    """What BERT's rule did to each token of one row: "visible", "mask" (now <mask>), "random" (a
    random id) or "kept" (selected, left unchanged). mask, replaced: bool [T]; original, corrupted: long [T]."""
    mask, replaced = _row(mask).cpu(), _row(replaced).cpu()
    if bool((replaced & ~mask).any()):
        raise ValueError("`replaced` must be a subset of `mask` (masking.TextMask)")
    changed = original.cpu() != corrupted.cpu()
    kinds = []
    for m, r, c in zip(mask.tolist(), replaced.tolist(), changed.tolist()):
        kinds.append("visible" if not m else "mask" if r else "random" if c else "kept")
    return kinds


def format_tokens(pieces: Sequence[str], kinds: Sequence[str], shown: Sequence[str] | None = None) -> str:
    """One line of text: `[piece]` for <mask>, `{piece->new}` for a random token, `(piece)` for a kept one.
    pieces: T original token strings; kinds: T of token_kinds(); shown: T corrupted token strings."""
    if len(pieces) != len(kinds):
        raise ValueError(f"{len(pieces)} pieces but {len(kinds)} kinds")
    out = []
    for i, (p, k) in enumerate(zip(pieces, kinds)):
        out.append({"visible": p, "mask": f"[{p}]", "kept": f"({p})",
                    "random": f"{{{p}->{shown[i] if shown is not None else '?'}}}"}[k])
    return " ".join(out)


def plot_tokens(pieces: Sequence[str], kinds: Sequence[str], ax=None, width: float = 60.0, title: str | None = None):
    """Tokens as coloured boxes, wrapped into lines of about `width` characters (orange: <mask>,
    blue: random token, green: kept unchanged; white: not selected). Returns the Axes."""
    if len(pieces) != len(kinds):
        raise ValueError(f"{len(pieces)} pieces but {len(kinds)} kinds")
    lines, line, used = [], [], 0.0
    for p, k in zip(pieces, kinds):
        n = len(p) + 1.5
        if line and used + n > width:
            lines.append(line)
            line, used = [], 0.0
        line.append((p, k, used))
        used += n
    lines.append(line)
    if ax is None:
        _, ax = plt.subplots(figsize=(width * 0.14, 0.42 * len(lines) + 0.6))
    for y, row in enumerate(lines):
        for p, k, x in row:
            ax.text(x, -y, p, family="monospace", fontsize=9, va="center",
                    bbox=dict(boxstyle="round,pad=0.2", fc=TOKEN_COLORS[k], ec="0.6" if k != "visible" else "0.9",
                              lw=0.6))
    ax.set_xlim(-0.5, width + 2)
    ax.set_ylim(-len(lines) + 0.4, 0.6)
    ax.axis("off")
    present = [k for k in ("mask", "random", "kept") if k in kinds]
    handles = [plt.Rectangle((0, 0), 1, 1, fc=TOKEN_COLORS[k], ec="0.6") for k in present]
    if handles:
        ax.legend(handles, [TOKEN_LABELS[k] for k in present], loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=len(handles), fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="small")
    return ax


def label_tokens(ax, pieces: Sequence[str], kinds: Sequence[str] | None = None, fontsize: float = 8):
    """Label the x axis of a per-token plot (x = token index 0..n-1) with the tokens themselves, one tick per
    token, so the text lines up with the data above it; tokens of a `kinds` other than "visible" get
    `plot_tokens`' colours (orange: <mask>). A leading space of a BPE piece shows as "·". Returns the Axes."""
    kinds = ["visible"] * len(pieces) if kinds is None else list(kinds)
    if len(pieces) != len(kinds):
        raise ValueError(f"{len(pieces)} pieces but {len(kinds)} kinds")
    ax.set_xticks(range(len(pieces)))
    ax.set_xticklabels([p.replace(" ", "·") for p in pieces], rotation=90, family="monospace", fontsize=fontsize)
    for label, k in zip(ax.get_xticklabels(), kinds):
        if k != "visible":
            label.set_bbox(dict(boxstyle="round,pad=0.15", fc=TOKEN_COLORS[k], ec="0.6", lw=0.5))
    ax.set_xlim(-0.5, len(pieces) - 0.5)
    return ax


def sample_ratios(draw: Callable[[torch.Generator], Tensor], n: int = 200, seed: int = 0,
                  padding_mask: Tensor | None = None) -> np.ndarray:
    """Measure a mask generator: call `draw(generator)` n times (one seeded generator) and return the
    masked fraction of every row, float [n * B]. draw: generator -> bool [B, T] (True = masked)."""
    g = torch.Generator().manual_seed(seed)
    ratios = [mask_ratio(draw(g), padding_mask) for _ in range(n)]
    return torch.cat(ratios).numpy()


def plot_ratio_hist(ratios: np.ndarray, paper: float | None = None, ax=None, title: str | None = None,
                    bins: int | np.ndarray = 30, label: str = "paper"):
    """Histogram of measured mask ratios with their mean and the paper's number as vertical lines.
    ratios: float [n] in [0, 1]. Returns the Axes."""
    ratios = np.asarray(ratios, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 2.6))
    ax.hist(100 * ratios, bins=bins, color="C0", alpha=0.75)
    ax.axvline(100 * ratios.mean(), color="C0", linestyle="-", label=f"measured mean {100 * ratios.mean():.1f}%")
    if paper is not None:
        ax.axvline(100 * paper, color="C3", linestyle="--", label=f"{label} {100 * paper:.1f}%")
    ax.set_xlabel("masked (%)")
    ax.set_ylabel("count")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # headroom: the legend sits above the bars, not on them
    ax.legend(loc="upper left", framealpha=0.9)
    if title:
        ax.set_title(title)
    return ax
