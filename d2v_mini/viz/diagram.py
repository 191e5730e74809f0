"""The data2vec 1.0 idea in one picture, drawn with matplotlib (notebook 00).

    fig = draw_overview(top_k=3, depth=4)
    plt.show()

Student (top row): the masked input goes through the encoder and a regression head. Teacher (bottom
row): the same input, unmasked, goes through an EMA copy of the encoder; its top-K layer outputs are
normalised and averaged into the targets. The loss compares both at the masked positions only, and
after each optimizer step the teacher moves towards the student.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

STUDENT, TEACHER, TARGET, LOSS = "#c6dbef", "#fdd0a2", "#c7e9c0", "#f2f2f2"
MASKED = "#8c8c8c"


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, fontsize: float = 9, **kw):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="0.3",
                                lw=0.8, **kw))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, a: tuple[float, float], b: tuple[float, float], text: str = "", style: str = "-|>",
           color: str = "0.2", ls: str = "-", rad: float = 0.0, offset: tuple[float, float] = (0.0, 0.12)):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=11, color=color, lw=1.0, linestyle=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))
    if text:
        ax.text((a[0] + b[0]) / 2 + offset[0], (a[1] + b[1]) / 2 + offset[1], text, ha="center", va="bottom",
                fontsize=8, color=color)


def _sequence(ax, x: float, y: float, masked: list[bool], size: float = 0.22, gap: float = 0.04):
    """A row of input positions; masked ones are grey with a diagonal hatch."""
    for i, m in enumerate(masked):
        ax.add_patch(Rectangle((x + i * (size + gap), y), size, size, fc=MASKED if m else "white", ec="0.3",
                               lw=0.6, hatch="////" if m else None))


def _stack(ax, x: float, y: float, w: float, depth: int, color: str, highlight: int = 0, label: str = ""):
    """An encoder as `depth` stacked blocks; the top `highlight` blocks are outlined (the top-K)."""
    h = 0.2
    for i in range(depth):
        top = i >= depth - highlight
        ax.add_patch(Rectangle((x, y + i * (h + 0.05)), w, h, fc=color, ec="C2" if top else "0.4",
                               lw=1.8 if top else 0.7))
    if label:
        ax.text(x + w / 2, y + depth * (h + 0.05) + 0.05, label, ha="center", va="bottom", fontsize=9,
                fontweight="bold")
    return y + depth * (h + 0.05) - 0.05  # top edge


def draw_overview(top_k: int = 3, depth: int = 5, figsize: tuple[float, float] = (10.5, 5.0)):
    """Draw the data2vec 1.0 training step: masked student, EMA teacher, averaged top-K targets, loss
    at masked positions. Returns the matplotlib Figure."""
    if not 1 <= top_k <= depth:
        raise ValueError(f"need 1 <= top_k <= depth, got top_k={top_k}, depth={depth}")
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(0, 10.5)
    ax.set_ylim(0.1, 5.1)
    ax.axis("off")
    masked = [False, True, True, True, False, False, True, True, False]
    seq_end = 1.75 + len(masked) * 0.26

    # input
    _box(ax, 0.1, 2.4, 1.3, 0.7, "input x\nspeech / image / text", "white", fontsize=8)

    # student row (top): masked input -> encoder -> head -> prediction
    ys = 3.4
    ax.text(1.75, ys + 0.32, "masked input (grey = masked)", fontsize=8)
    _sequence(ax, 1.75, ys, masked)
    s_top = _stack(ax, 4.35, ys, 1.3, depth, STUDENT, label="student  θ")
    _box(ax, 6.2, s_top - 0.45, 1.3, 0.45, "regression\nhead", STUDENT, fontsize=8)
    _box(ax, 8.05, s_top - 0.45, 1.6, 0.45, "prediction\nat masked positions", STUDENT, fontsize=8)
    _arrow(ax, (1.4, 2.9), (1.75, ys + 0.11))
    _arrow(ax, (seq_end, ys + 0.11), (4.35, ys + 0.1))
    _arrow(ax, (5.65, s_top - 0.1), (6.2, s_top - 0.2))
    _arrow(ax, (7.5, s_top - 0.22), (8.05, s_top - 0.22))

    # teacher row (bottom): the same input, unmasked -> EMA encoder -> top-K layers -> targets
    yt = 0.9
    ax.text(1.75, yt + 0.32, "the same input, unmasked", fontsize=8)
    _sequence(ax, 1.75, yt, [False] * len(masked))
    t_top = _stack(ax, 4.35, yt, 1.3, depth, TEACHER, highlight=top_k)
    ax.text(5.0, yt - 0.12, "EMA teacher  Δ  (no gradient)", ha="center", va="top", fontsize=9, fontweight="bold")
    _box(ax, 6.2, t_top - 0.8, 1.6, 0.75, f"top-{top_k} layers:\nnormalise each,\naverage", TARGET, fontsize=8)
    _box(ax, 8.3, t_top - 0.68, 1.35, 0.5, "targets y", TARGET, fontsize=9)
    _arrow(ax, (1.4, 2.6), (1.75, yt + 0.11))
    _arrow(ax, (seq_end, yt + 0.11), (4.35, yt + 0.1))
    _arrow(ax, (5.65, t_top - 0.35), (6.2, t_top - 0.4), color="C2")
    _arrow(ax, (7.8, t_top - 0.43), (8.3, t_top - 0.43))

    # loss between prediction and targets
    _box(ax, 8.25, 2.25, 1.45, 0.95, "loss at masked\npositions only\nL2 / Smooth-L1", LOSS, fontsize=8)
    _arrow(ax, (8.95, s_top - 0.45), (8.95, 3.2))
    _arrow(ax, (8.95, t_top - 0.18), (8.95, 2.25))

    # EMA update: the teacher follows the student
    _arrow(ax, (5.0, ys - 0.05), (5.0, t_top + 0.05), color="C3", ls="--")
    ax.text(5.12, (ys + t_top) / 2, "after each optimizer step:\nΔ ← τ Δ + (1 − τ) θ", ha="left", va="center",
            fontsize=8, color="C3")
    ax.set_title("data2vec 1.0: predict the teacher's averaged top-K layers at the masked positions", fontsize=10)
    fig.tight_layout()
    return fig
