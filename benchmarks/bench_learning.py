"""Learning benchmark: does tiny data2vec pretraining give representations that transfer?

Per modality: pretrain the demo's tiny setup (d2v_mini/demo.py SPECS) with several seeds and at 1x, 2x
and 4x its steps, then linear-probe the student on the task the setup was tuned for AND on other
labelled tasks of the same modality, against random-init encoders of the same shape and a raw-input
baseline (d2v_mini/baselines.py). Prints mean +- standard error per cell and writes JSON.

    .venv/bin/python benchmarks/bench_learning.py                                  # everything (~1 h, 2 cores)
    .venv/bin/python benchmarks/bench_learning.py --modalities speech --seeds 0 --scales 1 --quick
    .venv/bin/python benchmarks/bench_learning.py --modalities speech --set optim.lr=1e-3 --set masking.prob=0.8

Probe views (the same frozen features serve all views of one data set):
    speech  fsdd_digits (tuned), fsdd_speakers (other labels of the same clips)
    image   fashion_mnist (tuned), fashion_mnist with 500 labels (few-label), cifar10 (another image set)
    text    subjectivity (tuned), sentence_polarity (another sentence task)
Nothing here asserts on a time or an accuracy: tests/test_benchmarks.py runs --quick as a smoke test.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from d2v_mini import demo  # noqa: E402
from d2v_mini.evaluate import random_init_encoder  # noqa: E402
from d2v_mini.transfer import VIEWS, ProbeSuite, margin, mean_se  # noqa: E402

def parse_sets(items: list[str]) -> dict:
    """["optim.lr=1e-3", "masking.prob=0.8"] -> {"optim.lr": 0.001, "masking.prob": 0.8} (Python literals)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def run(modality: str, seeds: list[int], scales: list[float], random_inits: int, sets: dict, quick: bool,
        out_dir: Path, dataset: str | None = None, long_seeds: int | None = None) -> dict:
    """One modality's row. Scales above 1 run the first `long_seeds` seeds only (default: all)."""
    spec = demo.SPECS[modality]
    if dataset:
        spec = dataclasses.replace(spec, dataset=dataset)
    cfg = demo.tiny_config(spec, spec.steps, sets)
    t0 = time.perf_counter()
    probes = ProbeSuite(cfg, spec, quick)
    row = {"modality": modality, "spec": {k: v for k, v in vars(spec).items()}, "overrides": sets,
           "raw": probes.raw(), "random_init": [], "pretrained": {}}
    for k in range(random_inits):
        row["random_init"].append(probes.score(random_init_encoder(cfg, seed=1000 + k)))
    for scale in scales:
        runs = []
        for seed in (seeds if scale <= 1 or long_seeds is None else seeds[:long_seeds]):
            res, info = demo.pretrain_tiny(spec, out_dir / f"{modality}-x{scale}-s{seed}", seed=seed,
                                           steps_scale=scale * (0.1 if quick else 1.0), overrides=sets)
            runs.append(dict(seed=seed, **info, probe=probes.score(res.model.student)))
            print(f"  {modality} x{scale} seed {seed}: " + ", ".join(f"{v} {a:.3f}" for v, a in runs[-1]["probe"].items())
                  + f" (loss {info['final_loss']:.3f}" + (f", position R2 {info['position_r2']:.2f} chained, "
                                                          f"{info['position_r2_clips']:.2f} clips"
                                                          if "position_r2" in info else "") + ")", flush=True)
        row["pretrained"][str(scale)] = runs
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def table(rows: list[dict]) -> str:
    """Markdown: per task, the raw-input and random-init accuracies, the pretrained accuracy at each step
    multiple (mean ± SE over seeds) and the margin over random init at each (in SE units, see transfer.margin)."""
    scales = list(rows[0]["pretrained"])
    lines = ["| modality | task | raw input | random init | " + " | ".join(f"pretrained x{float(s):g}" for s in scales)
             + " | " + " | ".join(f"margin x{float(s):g} (SE)" for s in scales) + " |",
             "|---|---|---:|---:|" + "---:|" * (2 * len(scales))]
    for r in rows:
        for view in VIEWS[r["modality"]]:
            rnd = [x[view] for x in r["random_init"]]
            rm, rs = mean_se(rnd) if rnd else (float("nan"), 0.0)
            cells, margins = [], []
            for runs in r["pretrained"].values():
                acc = [x["probe"][view] for x in runs]
                m, se = mean_se(acc)
                cells.append(f"{m:.3f} ± {se:.3f}" if len(acc) > 1 else f"{m:.3f} (1 seed)")
                g = margin(acc, rnd) if rnd else None
                margins.append("-" if g is None else f"{g['margin']:+.3f} " + (f"({g['z']:+.1f})" if len(acc) > 1
                                                                                 else "(1 seed)"))
            lines.append(f"| {r['modality']} | {view} | {r['raw'][view]:.3f} | {rm:.3f} ± {rs:.3f} | "
                         + " | ".join(cells) + " | " + " | ".join(margins) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modalities", default="speech,image,text")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--scales", default="1,2,4", help="multiples of the demo's steps")
    p.add_argument("--random-inits", type=int, default=3)
    p.add_argument("--long-seeds", type=int, default=None, help="seeds run at scales > 1 (default: all of --seeds)")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    p.add_argument("--dataset", default=None, help="pretraining data set instead of the demo's (one modality)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smoke run: 10%% of the steps, small probe sets")
    p.add_argument("--out", default="runs/bench_learning")
    p.add_argument("--json", default=None, help="write the rows here (default <out>/results.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    sets = parse_sets(args.set)
    rows = []
    for m in args.modalities.split(","):
        print(f"== {m} ==", flush=True)
        rows.append(run(m, [int(s) for s in args.seeds.split(",")], [float(s) for s in args.scales.split(",")],
                        args.random_inits, sets, args.quick, out, args.dataset,
                        args.long_seeds))
    print(table(rows))
    path = Path(args.json or out / "results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(torch=torch.__version__, threads=args.threads, rows=rows), indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
