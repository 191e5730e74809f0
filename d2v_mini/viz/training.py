"""Pictures of a pretraining run: its curves, its linear probe, and the student's predictions
against the teacher's targets.

    print(format_recipes({"base": preset("image", "base"), "tiny": cfg}))   # the recipes' numbers
    axes = plot_curves(result.history)                  # or plot_curves("runs/image/metrics.jsonl")
    plot_probe({"data2vec": res, "random init": base}, chance=0.1)
    out = predict(model, x)                             # Data2VecOutput in eval mode, seeded mask
    cos = position_cosine(out.pred, out.target)         # [N] one cosine per masked position
    plot_sequence_cosine(out)                           # speech / text: per frame / token
    plot_waveform(wave, out.mask[0])                    # speech: the clip on the same frame axis
    position_r2(out.target, out.mask)                   # share of the targets explained by position alone
    plot_pca_maps(out, grid=model.student.grid, image=x[0])   # images: PCA colours, side by side

Everything takes plain tensors or a `Data2VecOutput` (pred, target: [N, D] at the N masked positions
of mask bool [B, T], True = masked, in row-major order of the mask).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..batching import describe_update
from ..masking import check_mask
from .masks import mask_runs, masked_image

# one panel per group: the two variances share theirs (they are compared with each other)
DEFAULT_PANELS: tuple[tuple[str, ...], ...] = (("loss",), ("target_var", "pred_var"), ("ema_decay",))
VISIBLE = 0.15  # the colour of the visible (unmasked, target-less) patches in the PCA maps
LABELS = {"loss": "loss", "target_var": "target_var (teacher)", "pred_var": "pred_var (student)",
          "ema_decay": "tau (EMA decay)", "lr": "learning rate", "grad_norm": "gradient norm"}


# -------------------------------------------------------------------------------------------- recipe
def recipe_summary(cfg) -> dict[str, str]:
    """The numbers of a Data2VecConfig's recipe, one readable string per ingredient (masking, targets,
    teacher, loss, optimisation, encoder)."""
    m, t, e, lo, o, enc = cfg.masking, cfg.targets, cfg.ema, cfg.loss, cfg.optim, cfg.encoder
    if m.kind == "span":
        masking = f"span: p={m.prob} of frames start a span of {m.length}"
    elif m.kind == "block":
        grid = enc.image_size // enc.patch_size
        masking = f"block: {m.num_patches} of {grid * grid} patches, blocks >= {m.min_block}"
    else:
        masking = (f"bert: p={m.prob} in spans of {m.length}, random {m.random_token_prob}, "
                   f"kept {m.leave_unmasked_prob}")
    site = {"ffn": "FFN output", "end": "block output"}[t.site]
    targets = f"top K={t.top_k} of {enc.depth} layers ({site}), {t.layer_norm} norm each, final {t.final_norm}"
    if e.decay_start == e.decay_end or not e.anneal_steps:
        tau = f"tau {e.decay_end} (constant)"
    else:
        tau = f"tau {e.decay_start} -> {e.decay_end} over {e.anneal_steps} steps"
    sees = ("the unmasked input" if e.teacher_input == "raw" or cfg.modality == "text"
            else "the student's unmasked front-end features")
    teacher = f"{tau}; sees {sees}"
    loss = "L2" if lo.beta == 0 else f"Smooth L1 (beta={lo.beta:g})"
    scale = "1/sqrt(D)" if lo.scale is None else f"{lo.scale:g}"
    loss += ", mean over elements" if lo.reduction == "mean" else f", sum over D x {scale}"
    # speech: one update in samples (base / large: batch_size batches of <= max_tokens samples, fairseq's 16 GPUs)
    batch = describe_update(cfg) if cfg.modality == "speech" else f"{o.batch_size}"
    optim = (f"lr {o.lr:g}, batch {batch}, {o.schedule}, warm-up {o.warmup_steps} of {o.total_steps} steps")
    encoder = f"{enc.depth} layers x {enc.dim} dims, {enc.heads} heads"
    if cfg.modality == "image":
        pos = {"shared": "shared relative position bias", "per_layer": "relative position bias per layer",
               "none": "no relative position bias"}[enc.rel_pos_bias]
        encoder += f", {enc.image_size}px / {enc.patch_size}px patches, {pos}"
        encoder += " + absolute positions" if enc.abs_pos_emb else ""
    return dict(encoder=encoder, masking=masking, targets=targets, teacher=teacher, loss=loss, optim=optim)


def format_recipes(cfgs: Mapping[str, object]) -> str:
    """A text table of `recipe_summary` for named configs ({"base": cfg, "tiny": cfg2}), one block each."""
    lines = []
    for name, cfg in cfgs.items():
        lines.append(f"[{cfg.modality} {name}]")
        lines += [f"  {k:<8} {v}" for k, v in recipe_summary(cfg).items()]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- curves
def load_history(history) -> list[dict]:
    """The metrics lines of a run: a list of dicts (a `TrainResult.history`), a `TrainResult`, a
    metrics.jsonl file, or a run folder holding one. Every line must have a "step"."""
    if hasattr(history, "history"):  # a TrainResult
        history = history.history
    if isinstance(history, (str, Path)):
        path = Path(history)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"no metrics file at {path}: expected a metrics.jsonl or a run folder holding one")
        history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = list(history)
    if not rows:
        raise ValueError("the history is empty: the run logged no metrics line (log_every > steps?)")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or "step" not in row:
            raise ValueError(f"history line {i} is not a dict with a 'step': {row!r}")
    return rows


def history_arrays(history, metrics: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (steps [n], values [n]) for the lines that have the metric (see `load_history`)."""
    rows = load_history(history)
    out = {}
    for m in metrics:
        have = [r for r in rows if m in r and r[m] is not None]
        if not have:
            keys = sorted({k for r in rows for k in r})
            raise KeyError(f"metric {m!r} is in no history line; the lines have {keys}")
        out[m] = (np.array([r["step"] for r in have]), np.array([float(r[m]) for r in have]))
    return out


def plot_curves(history, ax=None, panels: Sequence[Sequence[str]] = DEFAULT_PANELS, title: str | None = None):
    """Plot a run's metrics against the optimizer step: one line per metric, one panel per group in
    `panels` (default: loss | target_var and pred_var | tau). `history`: see `load_history`.
    `ax`: None (a new figure) or one Axes per panel. Returns the list of Axes."""
    panels = [(p,) if isinstance(p, str) else tuple(p) for p in panels]
    data = history_arrays(history, [m for p in panels for m in p])
    if ax is None:
        _, ax = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
        ax = ax[0]
    axes = list(np.atleast_1d(ax).ravel())
    if len(axes) != len(panels):
        raise ValueError(f"got {len(axes)} Axes for {len(panels)} panels {panels}")
    for a, group in zip(axes, panels):
        for m in group:
            steps, values = data[m]
            a.plot(steps, values, marker="." if len(steps) < 30 else None, label=LABELS.get(m, m))
        a.set_xlabel("step")
        a.set_title(" / ".join(LABELS.get(m, m).split(" (")[0] for m in group))
        if len(group) > 1:
            a.legend(fontsize="small")
        a.grid(alpha=0.3)
    if title:
        axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes


# --------------------------------------------------------------------------------------------- probe
def plot_probe(results: Mapping[str, dict | float], ax=None, chance: float | None = None, title: str | None = None):
    """Bars of linear-probe test accuracy, one per encoder: `results` maps a label to `evaluate.probe`'s
    dict (its "accuracy") or to an accuracy in [0, 1]. `chance`: a dashed line (e.g. 1 / classes).
    Returns the Axes."""
    if not results:
        raise ValueError("results is empty: expected {label: probe result}")
    names = list(results)
    acc = [float(r["accuracy"] if isinstance(r, Mapping) else r) for r in results.values()]
    if any(not 0.0 <= a <= 1.0 for a in acc):
        raise ValueError(f"accuracies must lie in [0, 1], got {dict(zip(names, acc))}")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.0))
    colors = [f"C{i}" for i in range(len(names))]
    bars = ax.bar(names, acc, color=colors, width=0.6)
    for b, a in zip(bars, acc):
        ax.text(b.get_x() + b.get_width() / 2, a + 0.01, f"{a:.3f}", ha="center", va="bottom")
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
        ax.legend(loc="lower right", fontsize="small")
    ax.set_ylim(0, min(1.0, max(acc) + 0.12) if max(acc) < 0.88 else 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "linear probe")
    ax.figure.tight_layout()
    return ax


# ------------------------------------------------------------------------- predictions vs targets
@torch.no_grad()
def predict(model, source: Tensor, padding_mask: Tensor | None = None, mask: Tensor | None = None,
            seed: int = 0):
    """The student's predictions and the teacher's targets for a batch, in eval mode (no dropout),
    without gradients; the train/eval state is restored. source: the model's input [B, ...]; mask:
    bool [B, T] (True = masked) or None for the recipe's mask drawn with `seed`.
    Returns the `Data2VecOutput` (pred, target [N, D]; mask [B, T])."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        pm = None if padding_mask is None else padding_mask.to(device)
        return model(source.to(device), padding_mask=pm, mask=None if mask is None else mask.to(device),
                     generator=gen)
    finally:
        model.train(was_training)


def position_cosine(pred: Tensor, target: Tensor) -> Tensor:
    """Cosine similarity of each prediction with its own target. pred, target: [N, D] -> [N]."""
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [N, D], got {tuple(pred.shape)} and {tuple(target.shape)}")
    return F.cosine_similarity(pred.float(), target.float(), dim=-1)


def shuffled_cosine(pred: Tensor, target: Tensor, seed: int = 0) -> Tensor:
    """The baseline of `position_cosine`: each prediction against the target of another (random)
    masked position. A student that ignores the context (a constant output) scores the same here as
    with its own targets. pred, target: [N, D] -> [N]."""
    n = pred.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 masked positions to shuffle, got {n}")
    g = torch.Generator().manual_seed(seed)
    perm = (torch.arange(n) + torch.randint(1, n, (n,), generator=g)) % n  # never the position itself
    return position_cosine(pred, target[perm.to(target.device)])


def per_row(values: Tensor, mask: Tensor) -> Tensor:
    """Put per-masked-position values back on the grid. values: [N] (row-major order of the mask);
    mask: bool [B, T] with N True entries. Returns float [B, T], NaN at unmasked positions."""
    mask = check_mask(mask)
    if int(mask.sum()) != values.numel():
        raise ValueError(f"{values.numel()} values for a mask with {int(mask.sum())} masked positions")
    out = torch.full(mask.shape, float("nan"), device=values.device)
    out[mask.to(values.device)] = values.float()
    return out


def plot_sequence_cosine(out, row: int = 0, ax=None, unit: str = "frame", seed: int = 0):
    """Speech frames / text tokens: the cosine of prediction and target at every masked position of
    one example (`row` of out.mask), with the shuffled-target baseline; masked spans are shaded.
    `out`: a Data2VecOutput (or anything with pred, target [N, D] and mask [B, T]). Returns the Axes."""
    cos = per_row(position_cosine(out.pred, out.target), out.mask)[row].cpu().numpy()
    base = per_row(shuffled_cosine(out.pred, out.target, seed), out.mask)[row].cpu().numpy()
    masked = out.mask[row].cpu().numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2.6))
    t = np.arange(len(masked))
    for start, stop in mask_runs(out.mask[row].cpu()):
        ax.axvspan(start - 0.5, stop - 0.5, color="C1", alpha=0.12, linewidth=0)
    ax.plot(t, cos, ".-", color="C0", label=f"own target (mean {np.nanmean(cos):.2f})")
    ax.plot(t, base, ".", color="gray", alpha=0.7, label=f"another position's target (mean {np.nanmean(base):.2f})")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlim(-0.5, len(masked) - 0.5)
    ax.set_xlabel(f"{unit} (shaded: masked)")
    ax.set_ylabel("cosine(pred, target)")
    ax.legend(loc="best", framealpha=0.85)
    ax.figure.tight_layout()
    return ax


def plot_waveform(wave: Tensor, mask: Tensor | None = None, hop: int = 320, ax=None, title: str | None = None):
    """A waveform on the encoder's frame axis (`hop` samples per frame: 320 = 20 ms at 16 kHz), with
    the masked frames shaded, to sit above `plot_sequence_cosine`. wave: [N]; mask: bool [T] or None."""
    if wave.ndim != 1:
        raise ValueError(f"wave must be one waveform [N], got shape {tuple(wave.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 1.8))
    w = wave.float().cpu().numpy()
    ax.plot(np.arange(len(w)) / hop - 0.5, w, color="C0", linewidth=0.5)
    if mask is not None:
        for start, stop in mask_runs(mask.cpu()):
            ax.axvspan(start - 0.5, stop - 0.5, color="C1", alpha=0.12, linewidth=0)
    ax.set_xlabel("frame (shaded: masked)")
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize="small")
    return ax


def position_r2(target: Tensor, mask: Tensor, lengths: Tensor | None = None, bins: int = 16, seed: int = 0) -> float:
    """How much of the targets' variance *where* a position is explains, without looking at the input:
    a least-squares fit of the targets on one-hot bins of the relative position t / length, fitted on a
    random 2/3 of the masked positions and scored (R^2) on the rest. Near 0: the targets are about the
    content; near 1: a model could predict them from the position alone (a shortcut that the variance
    guard does not see). target: [N, D] at the N masked positions of mask bool [B, T] (row-major);
    lengths: long [B] valid positions per row (default T)."""
    mask = check_mask(mask)
    if target.ndim != 2 or target.shape[0] != int(mask.sum()):
        raise ValueError(f"target must be [N, D] with N = {int(mask.sum())} masked positions, got {tuple(target.shape)}")
    b, t = mask.shape
    lengths = torch.full((b,), t) if lengths is None else lengths.cpu()
    rel = (torch.arange(t)[None, :] / lengths[:, None].clamp_min(1).float())[mask.cpu()]  # [N] in [0, 1)
    x = F.one_hot((rel * bins).long().clamp(0, bins - 1), bins).float()  # [N, bins]
    y = target.float().cpu()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    fit, test = perm[: 2 * len(y) // 3], perm[2 * len(y) // 3:]
    if len(test) < 2:
        raise ValueError(f"too few masked positions ({len(y)}) to fit and score")
    w = torch.linalg.lstsq(x[fit], y[fit]).solution  # [bins, D]: the mean target of each bin
    resid = (y[test] - x[test] @ w).pow(2).sum()
    return float(1 - resid / (y[test] - y[fit].mean(0)).pow(2).sum())


def plot_channel_scatter(pred: Tensor, target: Tensor, channels: Sequence[int] = (0, 1, 2, 3), axes=None):
    """Scatter of prediction against target for a few channels, one panel each (the diagonal is a
    perfect prediction; r = Pearson correlation). pred, target: [N, D]. Returns the list of Axes."""
    position_cosine(pred, target)  # shape check
    p, y = pred.float().cpu().numpy(), target.float().cpu().numpy()
    if axes is None:
        _, axes = plt.subplots(1, len(channels), figsize=(2.4 * len(channels), 2.5), squeeze=False)
        axes = axes[0]
    for a, c in zip(axes, channels):
        r = np.corrcoef(p[:, c], y[:, c])[0, 1]
        a.scatter(y[:, c], p[:, c], s=4, alpha=0.4)
        lo, hi = min(y[:, c].min(), p[:, c].min()), max(y[:, c].max(), p[:, c].max())
        a.plot([lo, hi], [lo, hi], color="gray", linewidth=0.8)
        a.set_title(f"channel {c}: r = {r:.2f}", fontsize="small")
        a.set_xlabel("target")
    axes[0].set_ylabel("prediction")
    axes[0].figure.tight_layout()
    return list(axes)


def pca_maps(pred: Tensor, target: Tensor, mask: Tensor, grid: tuple[int, int], row: int = 0,
             components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Colour the patches of one image by the first `components` principal components of the targets.

    pred, target: [N, D] at the masked patches of mask bool [B, h*w]; the PCA is fitted on all N targets
    and both pred and target are projected on it and scaled with the targets' range to [0, 1].
    Returns (pred_map, target_map), each [h, w, components], NaN at unmasked patches of `row`."""
    h, w = grid
    mask = check_mask(mask, (mask.shape[0], h * w))
    y, p = target.float().cpu(), pred.float().cpu()
    mean = y.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(y - mean, full_matrices=False)  # v: [min(N, D), D], rows = directions
    basis = v[:components]  # [k, D]
    py, pp = (y - mean) @ basis.T, (p - mean) @ basis.T  # [N, k]
    lo, hi = py.min(0).values, py.max(0).values
    py, pp = ((py - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1), ((pp - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    maps = []
    for proj in (pp, py):
        full = torch.full((mask.shape[0], h * w, components), float("nan"))
        full[mask.cpu()] = proj
        maps.append(rearrange(full[row], "(h w) k -> h w k", h=h, w=w).numpy())
    return maps[0], maps[1]


def plot_pca_maps(out, grid: tuple[int, int], image: Tensor | None = None, row: int = 0, axes=None):
    """Images: [the unmasked image (the teacher's input) | the student's input, masked patches grey] |
    teacher targets | student predictions, the masked patches coloured by the targets' first 3 principal
    components (dark: the visible patches, no target). out: a Data2VecOutput (pred, target [N, D],
    mask [B, h*w]); image: [C, H, W] of that row (4 panels with it, 2 without). Returns the Axes."""
    pred_map, target_map = pca_maps(out.pred, out.target, out.mask, grid, row)
    n = 4 if image is not None else 2
    if axes is None:
        _, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
        axes = axes[0]
    axes = list(axes)
    if len(axes) != n:
        raise ValueError(f"plot_pca_maps draws {n} panels {'with' if image is not None else 'without'} an image, "
                         f"got {len(axes)} axes")
    if image is not None:
        unmasked = torch.zeros_like(out.mask[row], dtype=torch.bool)
        axes[0].imshow(masked_image(image, unmasked, grid), interpolation="nearest")
        axes[0].set_title("image (teacher's input)", fontsize="small")
        axes[1].imshow(masked_image(image, out.mask[row], grid), interpolation="nearest")
        axes[1].set_title("student's input (grey: masked)", fontsize="small")
    for a, (name, mp) in zip(axes[n - 2:], (("teacher targets", target_map), ("student predictions", pred_map))):
        a.imshow(np.where(np.isnan(mp), VISIBLE, mp), interpolation="nearest")
        a.set_title(name, fontsize="small")
    for a in axes:
        a.set_xticks([]), a.set_yticks([])
    axes[0].figure.tight_layout()
    return axes
