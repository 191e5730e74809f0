"""`python -m d2v_mini demo` (what `make demo` runs): data2vec on a laptop, all three modalities.

For each modality: pretrain the `tiny` preset on an unlabelled train split (read offline from
$D2V_DATA), then linear-probe the pretrained student encoder and randomly initialised encoders of the
same shape with one protocol (same probe subsets, layer and pooling; L2 chosen on a split of the
probe's train set; accuracy on the task's held-out test split). The baseline is the mean over
`random_inits` random draws: one draw alone varies by several points (FSDD: 0.28 to 0.41).
Writes to `out_dir`:

    summary.json     {"speech": {...}, "image": {...}, "text": {...}}: dataset, steps, seconds, final_loss,
                     target_var, probe_accuracy, random_init_probe_accuracy (mean), ..._accuracies, margin
    curves.png       loss (top) and target / prediction variance (bottom), per modality
    <modality>/      the pretraining run (checkpoint.pt, metrics.jsonl, config.json, pipeline.json)

About 6-7 minutes on one CPU thread (measured 314-421 s on a 2-core machine shared with other jobs);
`--steps-scale 0.1` for a smoke run.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .pipeline import default_dataset


@dataclass
class DemoSpec:
    """What the demo runs for one modality."""

    modality: str
    steps: int  # pretraining steps (the tiny preset's schedule is stretched to exactly this many)
    probe_train: int  # probe subset sizes (the same items for both encoders)
    probe_test: int
    layer: int | str = "last"  # the representation probed (evaluate.select_layer)
    dataset: str | None = None  # None: pipeline.default_dataset(modality)
    task: str | None = None  # None: pipeline.default_probe(modality)
    preset: str = "tiny"  # the preset pretrained ("tiny_v2" for `demo --version 2`)


# The tiny setups, one per modality; benchmarks/bench_learning.py measures them (3 seeds, 1x / 2x / 4x the
# steps, probes on other tasks too, raw-input baselines; README "Does pretraining transfer?"). Pretraining data =
# the unlabelled train split of the probe's data set (FSDD train clips, chained into 2 s utterances by the tiny
# speech preset; Fashion-MNIST train; the subjectivity train sentences): no test item is ever seen. Text does
# not use the pipeline's default corpus (tiny-shakespeare): minutes of pretraining on it leave every sentence
# probe at the random-init level.
SPECS = {
    "speech": DemoSpec("speech", steps=200, probe_train=1500, probe_test=300, layer="mean"),
    "image": DemoSpec("image", steps=300, probe_train=5000, probe_test=2000, layer="mean"),
    "text": DemoSpec("text", steps=600, probe_train=8000, probe_test=2000, layer="mean",
                     dataset="subjectivity", task="subjectivity"),
}

# data2vec 2.0 (`demo --version 2`, runs/demo_v2): the tiny_v2 presets on the same data and probes, with
# steps chosen so that a run costs about as many CPU-seconds as the 1.0 demo's. Measured (benchmarks/bench_v2.py,
# benchmarks/results/v2.json; random init = mean of 3 tiny_v2 draws): images beat random init from the first
# stage (0.74 / 0.76 vs 0.60 at 300 steps, seeds 0 / 1); speech ends at 0.38-0.52 (mean 0.429) vs 0.331 (seeds
# 0-5; its teacher runs its own EMA CNN: with the released sharing it peaked at 67 steps and fell to
# 0.333 / 0.370); text ends at 0.715-0.738 (mean 0.730) vs 0.712 (seeds 0-4; ALiBi without absolute positions and
# per-layer LN targets: with the released learned positions the targets became position tables and it fell to
# 0.693 / 0.676; with ALiBi and the released IN targets it ended at 0.719 / 0.694). Tried for text without a gain
# (with IN targets unless said): LN targets with learned positions, tau 0.999 -> 0.9999, mask 0.15 / 0.3, the
# teacher on its own EMA embeddings, lr 2e-3, a 1-layer decoder, top-K 4, dropout 0.1, packed 64-token blocks
# (0.66-0.72); 1 or 2 clones with 2-3x the steps in the same time (0.711-0.723, seeds 0 / 1) are within the
# probe's noise of 4 clones; with LN targets: 1 clone x 700 steps (0.720 / 0.737, seeds 0 / 2, against 0.737 /
# 0.715 for 4 clones), LN then text-large's final IN (0.714). For speech: tau, mask 0.65, lr 2e-4, 2 clones
# x 16 clips, 400 steps, LN targets (the guard stops it: target variance < 0.1 at step 60), lr 1e-3 with the
# teacher's own CNN (0.363 / 0.377, seeds 0 / 2).
# README "data2vec 2.0" says what this does not show.
SPECS_V2 = {
    "speech": DemoSpec("speech", steps=200, probe_train=1500, probe_test=300, layer="mean", preset="tiny_v2"),
    "image": DemoSpec("image", steps=300, probe_train=5000, probe_test=2000, layer="mean", preset="tiny_v2"),
    "text": DemoSpec("text", steps=300, probe_train=8000, probe_test=2000, layer="mean",
                     dataset="subjectivity", task="subjectivity", preset="tiny_v2"),
}


def tiny_config(spec: DemoSpec, steps: int, overrides: dict | None = None):
    """The tiny preset of `spec.modality` with its schedules (LR warm-up + cosine, EMA anneal) stretched
    over `steps`, then `overrides` ({"optim.lr": 1e-3, ...}) applied."""
    from .config import fit_schedules, override
    from .presets import preset

    cfg = fit_schedules(preset(spec.modality, spec.preset), steps)
    return override(cfg, **(overrides or {}))


def pretrain_tiny(spec: DemoSpec, run_dir: Path, seed: int = 0, steps_scale: float = 1.0,
                  overrides: dict | None = None):
    """Pretrain the tiny setup of `spec` for round(spec.steps * steps_scale) steps into `run_dir`.
    Returns (TrainResult, info dict(steps, pretrain_seconds, final_loss, target_var, pred_var[, position_r2]))."""
    from .pipeline import pretrain_data, run_info
    from .runs import write_text
    from .train import TrainOptions, pretrain

    steps = max(1, round(spec.steps * steps_scale))
    cfg = tiny_config(spec, steps, overrides)
    name = spec.dataset or default_dataset(spec.modality)
    dataset, collate_fn = pretrain_data(cfg, name)
    t0 = time.perf_counter()
    pipeline = run_info(cfg, name, with_tokenizer=True)  # in every checkpoint (text: the tokenizer itself)
    res = pretrain(cfg, dataset, collate_fn, TrainOptions(steps=steps, out_dir=str(run_dir), log_every=10, seed=seed,
                                                          pipeline=pipeline))
    info = dict(steps=steps, pretrain_seconds=round(time.perf_counter() - t0, 1))
    # the same record as the checkpoint's (probe refuses a pipeline.json that differs from it)
    write_text(run_dir, "pipeline.json", json.dumps({k: v for k, v in pipeline.items() if k != "tokenizer_json"},
                                                    indent=1))
    last = res.history[-1]
    info.update(final_loss=last["loss"], target_var=last["target_var"], pred_var=last["pred_var"])
    if spec.modality == "speech" and cfg.version == 1:  # 2.0 clones masks: position_r2 reads 1.0 outputs
        info["position_r2"] = speech_position_r2(res.model)
        info["position_r2_clips"] = speech_position_r2(res.model, chained=False)
    return res, info


def speech_position_r2(model, clips: int = 100, chained: bool = True, seed: int = 0) -> float:
    """The share of the teacher's target variance that the frame's relative position alone explains
    (viz.training.position_r2) on held-out FSDD test speech: a shortcut detector for speech pretraining.

    chained=True (the default): utterances chained from test clips (data.ChainedClips) and batched like
    pretraining batches, so a frame's position in the utterance says nothing about its content, and
    whatever position explains is a shortcut (a random-init teacher: about 0). chained=False: single
    clips, padded. There the position is confounded with content: FSDD clips start and end in silence,
    so even the clips' own log-mel features are about 37% explained by position."""
    from .data import ChainedClips
    from .pipeline import probe_data, speech_collate
    from .viz.training import position_r2, predict

    cfg = model.cfg
    task = probe_data(cfg, "fsdd_digits")
    step = max(1, len(task.test) // clips)
    idx = list(range(0, len(task.test), step))[:clips]
    if not chained:
        batch = task.collate_fn([task.test[i] for i in idx])
        frames = model.student.feature_encoder.output_length((~batch["padding_mask"]).sum(1))
        out = predict(model, batch["source"], batch["padding_mask"], seed=1)
        return position_r2(out.target, out.mask, frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        utterances = ChainedClips(task.test, max(cfg.min_crop, 32_000))
        items = [utterances[i] for i in idx]
    batch = speech_collate(cfg, generator=torch.Generator().manual_seed(seed))(items)
    out = predict(model, batch["source"], None, seed=1)
    return position_r2(out.target, out.mask)


def run_modality(spec: DemoSpec, out_dir: Path, steps_scale: float = 1.0, seed: int = 0,
                 random_inits: int = 3) -> dict:
    """Pretrain the tiny preset of `spec.modality`, probe it and `random_inits` random-init twins (the
    baseline is their mean accuracy: one random draw varies by several points). Returns the summary row."""
    from .evaluate import probe, random_init_encoder
    from .pipeline import probe_data

    t0 = time.perf_counter()
    res, info = pretrain_tiny(spec, out_dir / spec.modality, seed, steps_scale)
    cfg = res.model.cfg
    name = spec.dataset or default_dataset(spec.modality)
    t1 = time.perf_counter()
    task = probe_data(cfg, spec.task, dataset=name, limit_train=spec.probe_train, limit_test=spec.probe_test)
    pre = probe(res.model.student, task, layer=spec.layer)
    rnd = [probe(random_init_encoder(cfg, seed=seed + 1 + k), task, layer=spec.layer)["accuracy"]
           for k in range(random_inits)]
    rnd_mean = sum(rnd) / len(rnd)
    return dict(dataset=name, steps=info["steps"], seconds=round(time.perf_counter() - t0, 1),
                pretrain_seconds=info["pretrain_seconds"], probe_seconds=round(time.perf_counter() - t1, 1),
                final_loss=info["final_loss"], target_var=info["target_var"], pred_var=info["pred_var"],
                probe_task=task.name, probe_layer=spec.layer, probe_train=pre["num_train"], probe_test=pre["num_test"],
                probe_accuracy=pre["accuracy"], random_init_probe_accuracy=rnd_mean,
                random_init_probe_accuracies=rnd, margin=pre["accuracy"] - rnd_mean, history=res.history,
                **({"position_r2": info["position_r2"]} if "position_r2" in info else {}))


def plot_curves(summary: dict, path: Path) -> None:
    """Loss (top row) and target / prediction variance (bottom row) against the step, per modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(summary), figsize=(4.2 * len(summary), 6), squeeze=False)
    for col, (modality, row) in enumerate(summary.items()):
        steps = [h["step"] for h in row["history"]]
        ax = axes[0, col]
        ax.plot(steps, [h["loss"] for h in row["history"]], color="C0")
        ax.set(title=f"{modality} ({row['dataset']})", xlabel="step", ylabel="loss", yscale="log")
        ax = axes[1, col]
        ax.plot(steps, [h["target_var"] for h in row["history"]], label="target_var", color="C1")
        ax.plot(steps, [h["pred_var"] for h in row["history"]], label="pred_var", color="C2")
        ax.set(xlabel="step", ylabel="std across positions")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(summary: dict) -> str:
    head = ["modality", "dataset", "steps", "seconds", "final_loss", "target_var", "probe task",
            "pretrained", "random init", "margin"]
    rows = [[m, r["dataset"], str(r["steps"]), f"{r['seconds']:.0f}", f"{r['final_loss']:.4f}",
             f"{r['target_var']:.3f}", f"{r['probe_task']} ({r['probe_train']}/{r['probe_test']})",
             f"{r['probe_accuracy']:.3f}", f"{r['random_init_probe_accuracy']:.3f}", f"{r['margin']:+.3f}"]
            for m, r in summary.items()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run_demo(out_dir: str | Path | None = None, steps_scale: float = 1.0,
             modalities: list[str] | tuple[str, ...] = ("speech", "image", "text"), seed: int = 0,
             threads: int | None = None, random_inits: int = 3, version: int = 1) -> dict:
    """Run the demo; returns the summary (also written to out_dir/summary.json).

    threads: torch CPU threads. Default 1 unless OMP_NUM_THREADS is set: these models are too small to
    gain much from a second thread, and two threads slow down several-fold as soon as anything else
    runs on the machine (measured: 0.17 s/step with 1 thread, 1.3 s/step with 2, on a busy 2-core box)."""
    if not (steps_scale > 0 and random_inits >= 1) or set(modalities) - set(SPECS):
        raise ValueError(f"need steps_scale > 0, random_inits >= 1 and modalities from {list(SPECS)}, got "
                         f"{steps_scale}, {random_inits} and {list(modalities)}")
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    if version not in (1, 2):
        raise ValueError(f"demo version must be 1 (data2vec) or 2 (data2vec 2.0), got {version}")
    specs = SPECS if version == 1 else SPECS_V2
    out = Path(out_dir or ("runs/demo" if version == 1 else "runs/demo_v2"))
    out.mkdir(parents=True, exist_ok=True)
    start, summary = time.perf_counter(), {}
    print(f"d2v_mini demo: tiny data2vec pretraining + linear probes, {torch.get_num_threads()} CPU threads, "
          f"output in {out}/")
    for m in modalities:
        print(f"\n== {m}: pretraining the tiny preset, then probing it and a random-init encoder ==")
        summary[m] = run_modality(specs[m], out, steps_scale, seed, random_inits)
        r = summary[m]
        rnd = ", ".join(f"{a:.3f}" for a in r["random_init_probe_accuracies"])
        print(f"{m}: probe accuracy {r['probe_accuracy']:.3f}, random init {r['random_init_probe_accuracy']:.3f} "
              f"(mean of {rnd}), {r['seconds']:.0f} s")
    plot_curves(summary, out / "curves.png")
    (out / "summary.json").write_text(json.dumps(
        {m: {k: v for k, v in r.items() if k != "history"} for m, r in summary.items()}, indent=1))
    print(f"\n{format_table(summary)}\n\ntotal {time.perf_counter() - start:.0f} s; "
          f"{out / 'summary.json'}, {out / 'curves.png'}")
    return summary
