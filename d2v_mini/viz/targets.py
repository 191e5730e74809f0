"""Looking at a teacher: per-layer statistics, and its regression targets made visible (notebook 02).

    stats = layer_stats(out.layer_results, out.padding_mask)   # one dict per block: scale, channel means
    rgb = pca_rgb(targets[0], grid=(8, 8))                       # [h, w, 3] in [0, 1]: 3 principal components
    sim = cosine_matrix(targets[0])                              # [T, T] frame-by-frame cosine similarity
    idx, cos = nearest(targets[0], k=3)                          # each position's most similar other positions
    same_label_neighbour_rate(y, tokens), same_label_chance(tokens)   # text: nearest neighbour is the same token?
    explained_by(y, positions), explained_by(y, tokens)          # share of the targets' variance a label explains
    plot_ema_schedule({"speech base": cfg.ema, ...}, steps=400_000)

All functions take plain tensors: x [T, D] (one example) or [B, T, D], padding_mask bool [B, T]
(True = padding), as everywhere in d2v_mini.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from ..config import EMAConfig
from ..ema import ema_decay
from ..masking import check_mask


def _valid(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """The non-padded positions of x [B, T, D] as float [N, D]."""
    if x.ndim != 3:
        raise ValueError(f"expected [B, T, D], got shape {tuple(x.shape)}")
    if padding_mask is None:
        return rearrange(x.float(), "b t d -> (b t) d")
    return x.float()[~check_mask(padding_mask, tuple(x.shape[:2]), "padding_mask")]


def channel_time_means(x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Each channel's mean over the (non-padded) time steps of each example. x: [B, T, D] -> [B, D].
    Instance norm makes these exactly 0 (and the matching standard deviations 1)."""
    if x.ndim != 3:
        raise ValueError(f"expected [B, T, D], got shape {tuple(x.shape)}")
    if padding_mask is None:
        return reduce(x.float(), "b t d -> b d", "mean")
    keep = rearrange((~check_mask(padding_mask, tuple(x.shape[:2]), "padding_mask")).float(), "b t -> b t 1")
    return reduce(x.float() * keep, "b t d -> b d", "sum") / reduce(keep, "b t 1 -> b 1", "sum").clamp_min(1)


def layer_stats(layers: Sequence[Tensor], padding_mask: Tensor | None = None) -> list[dict[str, float]]:
    """Summary statistics of each layer's output. layers: L tensors [B, T, D]; padding_mask: bool [B, T].

    Per layer: `rms` (root mean square of all values: the layer's scale), `std` (std of all values),
    `channel_mean` (mean |per-channel mean over time|: the constant part of each channel, what
    instance norm removes), `channel_std` (mean over channels of each channel's std over all
    positions: fairseq's target_var statistic), `channel_std_min` / `channel_std_max` (the quietest
    and the loudest channel), `max_abs`."""
    rows = []
    for i, x in enumerate(layers):
        v = _valid(x, padding_mask)
        per_channel = v.std(dim=0)  # [D]
        rows.append({"layer": i + 1, "rms": float(v.pow(2).mean().sqrt()), "std": float(v.std()),
                     "channel_mean": float(channel_time_means(x, padding_mask).abs().mean()),
                     "channel_std": float(per_channel.mean()), "channel_std_min": float(per_channel.min()),
                     "channel_std_max": float(per_channel.max()), "max_abs": float(v.abs().max())})
    return rows


def pca(x: Tensor, components: int = 3) -> Tensor:
    """Project rows onto their first principal components. x: [N, D] -> [N, components] (centred)."""
    if x.ndim != 2:
        raise ValueError(f"expected [N, D], got shape {tuple(x.shape)}")
    if components > min(x.shape):
        raise ValueError(f"{components} components need at least that many rows and columns, got {tuple(x.shape)}")
    x = x.float() - x.float().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)  # rows of v: principal directions, by variance
    return x @ v[:components].T


def pca_rgb(x: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Colour a patch grid by the first three principal components of its features.

    x: [h*w, D] (one image's patches in row-major order, no CLS) or [B, h*w, D] (one PCA fitted on
    all B images, so colours are comparable across them); grid (h, w). Each component is min-max
    scaled to [0, 1] and becomes one colour channel: patches with similar features get similar
    colours. Returns float [h, w, 3] (or [B, h, w, 3]) in [0, 1]."""
    h, w = grid
    if x.ndim not in (2, 3) or x.shape[-2] != h * w:
        raise ValueError(f"expected [{h * w}, D] or [B, {h * w}, D] patch features for a {h}x{w} grid, "
                         f"got shape {tuple(x.shape)}")
    batched = x.ndim == 3
    flat = rearrange(x, "b n d -> (b n) d") if batched else x
    p = pca(flat, 3)
    lo, hi = p.min(0).values, p.max(0).values
    p = ((p - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    if batched:
        return rearrange(p, "(b h w) c -> b h w c", b=x.shape[0], h=h, w=w).cpu().numpy()
    return rearrange(p, "(h w) c -> h w c", h=h, w=w).cpu().numpy()


def cosine_matrix(x: Tensor) -> Tensor:
    """Cosine similarity of every pair of positions. x: [T, D] -> [T, T] (symmetric, ones on the diagonal)."""
    if x.ndim != 2:
        raise ValueError(f"expected [T, D], got shape {tuple(x.shape)}")
    u = F.normalize(x.float(), dim=-1)
    return u @ u.T


def nearest(x: Tensor, k: int = 3, exclude_self: bool = True) -> tuple[Tensor, Tensor]:
    """The k most similar positions of each position by cosine similarity. x: [T, D].
    Returns (indices long [T, k], cosines float [T, k]), most similar first."""
    sim = cosine_matrix(x)
    if exclude_self:
        sim = sim.masked_fill(torch.eye(len(sim), dtype=torch.bool, device=sim.device), -2.0)
    cos, idx = sim.topk(k, dim=-1)
    return idx, cos


def same_label_neighbour_rate(x: Tensor, labels: Tensor, valid: Tensor | None = None) -> float:
    """How often a position's nearest neighbour (cosine, within its own example) has the same label.

    x: [B, T, D] (e.g. targets); labels: long [B, T] (e.g. token ids); valid: bool [B, T] (positions
    to consider, default all). Only positions whose label occurs at least twice among the valid
    positions of their row are counted. For text targets: near 1 when a target is mostly its token's
    identity, lower when context shapes it. Returns a fraction in [0, 1] (NaN if nothing is counted)."""
    if x.ndim != 3 or labels.shape != x.shape[:2]:
        raise ValueError(f"expected x [B, T, D] and labels [B, T], got {tuple(x.shape)} and {tuple(labels.shape)}")
    valid = torch.ones(labels.shape, dtype=torch.bool) if valid is None else check_mask(valid, tuple(labels.shape), "valid")
    hits = total = 0
    for row, lab, keep in zip(x, labels, valid):
        row, lab = row[keep], lab[keep]
        if len(lab) < 2:
            continue
        counts = (lab[:, None] == lab[None, :]).sum(1)  # [T'] occurrences of each position's label
        idx, _ = nearest(row, k=1)
        counted = counts >= 2
        hits += int((lab[idx[:, 0]] == lab)[counted].sum())
        total += int(counted.sum())
    return hits / total if total else float("nan")


def explained_by(x: Tensor, groups: Tensor) -> float:
    """The share of the variance of x that its group means explain (R^2 of predicting each row by the mean of
    its group; 1 = x is a function of the group). x: [N, D]; groups: long [N] (e.g. each target's position,
    or its token id)."""
    if x.ndim != 2 or groups.shape != x.shape[:1]:
        raise ValueError(f"expected x [N, D] and groups [N], got {tuple(x.shape)} and {tuple(groups.shape)}")
    x = x.double()
    _, inverse = torch.unique(groups, return_inverse=True)
    n = torch.bincount(inverse).to(x.dtype)  # rows per group
    means = torch.zeros(len(n), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x) / rearrange(n, "g -> g 1")
    total = ((x - x.mean(0)) ** 2).sum()
    return float(1 - ((x - means[inverse]) ** 2).sum() / total.clamp_min(1e-12))


def same_label_chance(labels: Tensor, valid: Tensor | None = None) -> float:
    """The chance level of `same_label_neighbour_rate`: the probability that a random *other* valid
    position of the same row has the same label, averaged over the positions that the rate counts (those
    whose label occurs at least twice among the valid positions of their row). labels: long [B, T];
    valid: bool [B, T] (default all). Returns a fraction in [0, 1] (NaN if nothing is counted)."""
    if labels.ndim != 2:
        raise ValueError(f"expected labels [B, T], got shape {tuple(labels.shape)}")
    valid = torch.ones(labels.shape, dtype=torch.bool) if valid is None else check_mask(valid, tuple(labels.shape), "valid")
    total, counted = 0.0, 0
    for lab, keep in zip(labels, valid):
        lab = lab[keep]
        if len(lab) < 2:
            continue
        counts = (lab[:, None] == lab[None, :]).sum(1)  # [T'] occurrences of each position's label
        repeated = counts >= 2
        total += float(((counts[repeated] - 1).float() / (len(lab) - 1)).sum())
        counted += int(repeated.sum())
    return total / counted if counted else float("nan")


def plot_layer_stats(rows: Sequence[Mapping[str, float]], keys: Sequence[str] = ("rms", "channel_mean"), ax=None,
                     title: str | None = None):
    """Bars of `layer_stats` per layer, one group per key. Returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 2.8))
    layers = np.array([r["layer"] for r in rows])
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        ax.bar(layers + (i - (len(keys) - 1) / 2) * width, [r[k] for r in rows], width, label=k)
    ax.set_xticks(layers)
    ax.set_xlabel("block")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="small")
    return ax


def plot_ema_schedule(schedules: Mapping[str, EMAConfig], steps: int, ax=None, points: int = 400):
    """tau (EMA decay) over `steps` optimizer updates for each named EMAConfig (`ema.ema_decay`).
    Returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    s = np.linspace(0, steps, points).round().astype(int)
    for i, (name, cfg) in enumerate(schedules.items()):
        ax.plot(s, [ema_decay(int(k), cfg) for k in s], label=name, color=f"C{i}")
    if steps >= 10_000:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("tau")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax
