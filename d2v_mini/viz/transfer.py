"""Pictures of the learning benchmark (benchmarks/bench_learning.py): does pretraining beat a random-init
encoder, and how far is it from the raw input, on every probe view of a modality?

    bench = load_benchmark(modality="image")            # a row of benchmarks/results/learning.json, or None
    plot_transfer(bench, this_run=suite.score(student))  # grouped bars, mean +- standard error
    print(format_transfer(this_run, random_inits, raw))  # this run's table, margins in standard errors

A benchmark row is dict(modality, raw={view: acc}, random_init=[{view: acc}, ...] (one per init),
pretrained={"1.0": [{"seed", "probe": {view: acc}, ...}, ...], "2.0": [...], ...}) (multiples of the demo's
steps, one entry per seed). Error bars are standard errors of the mean over seeds / inits (transfer.mean_se).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..transfer import margin, mean_se

RAW, RANDOM, THIS_RUN = "raw input", "random init", "this run"


def benchmark_path() -> Path:
    """benchmarks/results/learning.json of the source checkout this package was imported from."""
    import d2v_mini

    return Path(d2v_mini.__file__).resolve().parents[1] / "benchmarks" / "results" / "learning.json"


def load_benchmark(path: str | Path | None = None, modality: str | None = None, spec=None):
    """The learning benchmark's results (bench_learning.py's JSON: dict(rows=[...])) from `path` (default
    `benchmark_path()`), or with `modality` only that modality's row. None, with a printed note, when the
    file (e.g. a wheel installed on Colab has no benchmarks/ folder) or the modality's row is missing.
    `spec` (a demo.DemoSpec): print a note when the row was run with another spec or with overrides."""
    path = Path(path) if path is not None else benchmark_path()
    if not path.exists():
        print(f"note: no learning benchmark results at {path} (a source checkout has them; run "
              f"benchmarks/bench_learning.py to make them).")
        return None
    bench = json.loads(path.read_text())
    if "rows" not in bench:
        raise ValueError(f"{path} has no 'rows': expected the JSON written by benchmarks/bench_learning.py")
    if modality is None:
        return bench
    row = next((r for r in bench["rows"] if r.get("modality") == modality), None)
    if row is None:
        print(f"note: {path} has no {modality} row (it has {[r.get('modality') for r in bench['rows']]}).")
    elif spec is not None and (row.get("spec") != vars(spec) or row.get("overrides")):
        print(f"note: the benchmark's {modality} row was run with {row.get('spec')} and overrides "
              f"{row.get('overrides') or {}}, not with {vars(spec)}: rerun benchmarks/bench_learning.py.")
    return row


def transfer_bars(row: Mapping) -> dict[str, dict[str, tuple[float, float]]]:
    """What `plot_transfer` draws: series label -> {view: (mean, standard error)}, in drawing order:
    raw input (one value, SE 0), random init (over inits), pretrained x<k> (over seeds) per step multiple."""
    views = list(row["raw"])
    out = {RAW: {v: (float(row["raw"][v]), 0.0) for v in views}}
    if row.get("random_init"):
        out[RANDOM] = {v: mean_se([float(r[v]) for r in row["random_init"]]) for v in views}
    for scale, runs in row.get("pretrained", {}).items():
        if runs:
            label = f"pretrained x{float(scale):g}"
            out[label] = {v: mean_se([float(r["probe"][v]) for r in runs]) for v in views}
    return out


def plot_transfer(row: Mapping, ax=None, this_run: Mapping[str, float] | None = None,
                  chance: Mapping[str, float] | None = None, title: str | None = None):
    """Grouped bars of linear-probe test accuracy, one group per view of a benchmark `row` (see the module
    docstring): raw input, random init and pretrained at each step multiple, each with its standard error
    as an error bar (n = inits / seeds; n = 1 gives none). `this_run` ({view: acc}, e.g. a notebook's own
    run): black dots in a slot of their own (views missing from either side: a note, no dot). `chance`
    ({view: acc}): a dashed line over each group.
    Returns the Axes; each series is a container of `ax.containers` labelled as in `transfer_bars`."""
    series = transfer_bars(row)
    views = list(row["raw"])
    if this_run is not None and set(this_run) != set(views):
        if not set(this_run) & set(views):
            raise ValueError(f"this_run has views {sorted(this_run)}, the row has {sorted(views)}: none in common")
        print(f"note: this run has views {sorted(this_run)}, the benchmark row {sorted(views)}: "
              f"dots where both have one")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    slots = len(series) + (this_run is not None)
    width = 0.8 / slots
    x = np.arange(len(views))
    colors = {RAW: "0.6", RANDOM: "C7"}
    for i, (label, cells) in enumerate(series.items()):
        means = [cells[v][0] for v in views]
        errs = [cells[v][1] for v in views]
        color = colors.get(label, f"C{i - 2}")
        ax.bar(x + (i - (slots - 1) / 2) * width, means, width * 0.9, yerr=errs, capsize=3, color=color,
               label=label, error_kw=dict(elinewidth=1.2, ecolor="black"))
    if this_run is not None:
        have = [j for j, v in enumerate(views) if v in this_run]
        ax.plot(x[have] + (slots - 1) / 2 * width, [this_run[views[j]] for j in have], "o", color="black",
                markersize=6, label=THIS_RUN)
    for j, v in enumerate(views):
        if chance and v in chance:
            ax.hlines(chance[v], j - 0.45, j + 0.45, colors="gray", linestyles="--", linewidth=1,
                      label="chance" if j == 0 else None)
    ax.set_xticks(x, [v.replace("_", " ") for v in views], fontsize=10)
    ax.set_ylabel("probe test accuracy", fontsize=10)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"{row.get('modality', '')} linear probes: mean ± standard error".strip(), fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.figure.tight_layout()
    return ax


def format_transfer(this_run: Mapping[str, float], random_init: Sequence[Mapping[str, float]],
                    raw: Mapping[str, float] | None = None, pretrained_label: str = "this run") -> str:
    """A text table, one line per view: raw input, random init (mean ± SE over the inits), this run, and
    the margin over random init with its standard error and in standard errors (`transfer.margin`;
    one run has no spread, so the SE is the random inits')."""
    lines = [f"{'view':<20}{'raw input':>10}{'random init':>17}{pretrained_label:>11}{'margin':>17}{'in SE':>7}"]
    for v, acc in this_run.items():
        rnd = [float(r[v]) for r in random_init]
        m, se = mean_se(rnd)
        d = margin([float(acc)], rnd)
        raw_s = f"{raw[v]:.3f}" if raw is not None else "-"
        rnd_s, diff_s = f"{m:.3f} ± {se:.3f}", f"{d['margin']:+.3f} ± {d['se']:.3f}"
        lines.append(f"{v:<20}{raw_s:>10}{rnd_s:>17}{acc:>11.3f}{diff_s:>17}{d['z']:>+7.1f}")
    return "\n".join(lines)
