"""data2vec 2.0 against 1.0: throughput at the base image preset and time to accuracy at tiny size.

(a) throughput: one whole training step (student forward + decoder / head, teacher, targets, loss,
    backward, optimizer, EMA), 1.0 `image/base` vs 2.0 `image/base_v2`, the same images per step. Reported:
    ms per step, its parts, and *predicted positions per second* (masked positions that get a loss:
    1.0 about 120 per image, 2.0 157 per image x 16 clones).
(b) time to accuracy: per modality and seed, pretrain the 1.0 demo setup (d2v_mini/demo.py SPECS) and
    probe it; then pretrain the 2.0 demo setup (SPECS_V2) in stages, probing after each, and report the
    pretraining seconds 2.0 needs to reach 1.0's probe accuracy (and the ratio to 1.0's seconds).

    .venv/bin/python benchmarks/bench_v2.py --part throughput --batch 2 --threads 1
    .venv/bin/python benchmarks/bench_v2.py --part throughput --device cuda --batch 16 --precision bf16
    .venv/bin/python benchmarks/bench_v2.py --part accuracy --modalities image --seeds 0,1 --threads 1
Nothing here asserts on a time or an accuracy.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import common
from d2v_mini import demo
from d2v_mini.data2vec2 import build_model


# ------------------------------------------------------------------------------------- (a) throughput
def throughput(name: str, batch: int, device: torch.device, args) -> dict:
    cfg = common.bench_config("image", name)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = build_model(cfg).to(device).train()
    opt, sched = common.make_optimizer(model)
    scaler = common.grad_scaler(device, args.precision)
    source = common.make_batch(cfg, batch, device, generator=g)
    timer = common.PhaseTimer(device)
    # the teacher's entry point: forward (raw input) or, for a 2.0 teacher on the student's features,
    # forward_features; wrapping both would count the nested call twice
    entry = "forward_features" if cfg.version == 2 and cfg.ema.teacher_input == "student_features" else "forward"
    teacher_call = getattr(model.teacher.model, entry)

    def timed_teacher(*a, **kw):
        with timer("teacher"):
            return teacher_call(*a, **kw)
    setattr(model.teacher.model, entry, timed_teacher)
    counts = []
    for i in range(args.warmup + args.repeats):
        timer.new_step()
        with timer("step"):
            with timer("forward"), common.autocast(device, args.precision):
                out = model(source, generator=g)
            with timer("backward"):
                scaler.scale(out.loss * out.num_masked).backward()
            with timer("optimizer"):
                common.optimizer_step(model, opt, sched, scaler, out.num_masked)
            with timer("ema"):
                model.ema_step()
        counts.append(out.num_masked)
    ms = timer.medians(skip=args.warmup)
    predicted = statistics.median(counts[args.warmup:])
    row = {"preset": name, "batch": batch, "step_ms": ms["step"], "forward_ms": ms["forward"],
           "teacher_ms": ms.get("teacher", 0.0), "backward_ms": ms["backward"], "optimizer_ms": ms["optimizer"],
           "ema_ms": ms["ema"], "predicted_per_step": predicted, "predicted_per_s": 1e3 * predicted / ms["step"],
           "images_per_s": 1e3 * batch / ms["step"], "peak_mem_MiB": common.peak_memory_mib(device)}
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return row


# -------------------------------------------------------------------------------- (b) time to accuracy
def probe_accuracy(model, spec, task_cache: dict) -> float:
    from d2v_mini.evaluate import probe
    from d2v_mini.pipeline import default_dataset, probe_data

    key = (spec.modality, model.cfg.encoder.image_size if spec.modality == "image" else 0)
    if key not in task_cache:
        task_cache[key] = probe_data(model.cfg, spec.task, dataset=spec.dataset or default_dataset(spec.modality),
                                     limit_train=spec.probe_train, limit_test=spec.probe_test)
    return probe(model.student, task_cache[key], layer=spec.layer)["accuracy"]


def staged_pretrain(spec, steps: list[int], run_dir: Path, seed: int, tasks: dict) -> list[dict]:
    """Pretrain `spec` to steps[-1] (the schedules span steps[-1]), probing after each stage."""
    from d2v_mini.pipeline import default_dataset, pretrain_data
    from d2v_mini.train import TrainOptions, pretrain

    cfg = demo.tiny_config(spec, steps[-1])
    dataset, collate_fn = pretrain_data(cfg, spec.dataset or default_dataset(spec.modality))
    points = []
    for s in steps:
        res = pretrain(cfg, dataset, collate_fn, TrainOptions(steps=s, out_dir=str(run_dir), resume=True, seed=seed,
                                                              log_every=10, progress=False))
        seconds = res.history[-1]["seconds"] if res.history else float("nan")
        points.append({"steps": s, "seconds": seconds, "accuracy": probe_accuracy(res.model, spec, tasks)})
        print(f"    {spec.preset} step {s}: {seconds:.0f} s, probe {points[-1]['accuracy']:.3f}", flush=True)
    return points


def time_to_accuracy(modality: str, seed: int, args) -> dict:
    """1.0's demo run, then 2.0's run probed after each stage (fractions `args.stages` of its steps). The
    time to accuracy is the first stage at or above 1.0's accuracy: an upper bound at the stages' resolution."""
    tasks: dict = {}
    scale = args.steps_scale
    v1, v2 = demo.SPECS[modality], demo.SPECS_V2[modality]
    fractions = [eval_fraction(f) for f in common.split_list(args.stages)]
    with tempfile.TemporaryDirectory() as tmp:
        ref = staged_pretrain(v1, [max(1, round(v1.steps * scale))], Path(tmp) / "v1", seed, tasks)[-1]
        stages = sorted({max(1, round(v2.steps * scale * f)) for f in fractions})
        curve = staged_pretrain(v2, stages, Path(tmp) / "v2", seed, tasks)
    reached = next((p for p in curve if p["accuracy"] >= ref["accuracy"]), None)
    row = {"modality": modality, "seed": seed, "v1_seconds": ref["seconds"], "v1_accuracy": ref["accuracy"],
           "v2_curve": curve, "v2_seconds_to_v1_accuracy": reached["seconds"] if reached else None,
           "time_ratio": reached["seconds"] / ref["seconds"] if reached else None}
    print(f"  {modality} seed {seed}: 1.0 {ref['accuracy']:.3f} in {ref['seconds']:.0f} s; 2.0 reaches it in "
          + (f"{reached['seconds']:.0f} s (ratio {row['time_ratio']:.2f})" if reached else "never (within the run)"),
          flush=True)
    return row


def eval_fraction(text: str) -> float:
    """'1/3' -> 0.333..., '0.5' -> 0.5 (a stage of the 2.0 run)."""
    num, _, den = text.partition("/")
    f = float(num) / float(den or 1)
    if not 0 < f <= 1:
        raise SystemExit(f"--stages takes fractions in (0, 1], got {text!r}")
    return f


def _mean_se(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def mean_curve(rs: list[dict]) -> dict:
    """Over seeds: 1.0's mean accuracy and seconds, 2.0's mean accuracy and seconds at each stage (the seeds
    share the stages), and the first stage whose mean accuracy reaches 1.0's mean accuracy."""
    v1_acc, v1_se = _mean_se([r["v1_accuracy"] for r in rs])
    v1_s = statistics.mean(r["v1_seconds"] for r in rs)
    stages = []
    for points in zip(*(r["v2_curve"] for r in rs)):
        assert len({p["steps"] for p in points}) == 1, "the seeds' 2.0 runs were probed at different steps"
        acc, se = _mean_se([p["accuracy"] for p in points])
        stages.append({"steps": points[0]["steps"], "seconds": statistics.mean(p["seconds"] for p in points),
                       "accuracy": acc, "accuracy_se": se})
    reached = next((p for p in stages if p["accuracy"] >= v1_acc), None)
    return {"v1_accuracy": v1_acc, "v1_accuracy_se": v1_se, "v1_seconds": v1_s, "v2_stages": stages,
            "ratio": reached["seconds"] / v1_s if reached else None}


def summarize(rows: list[dict]) -> dict:
    """Per modality: the time ratio (2.0 seconds to 1.0's accuracy / 1.0 seconds) per seed, mean and
    standard error (a seed where 2.0 never reaches 1.0 within its run counts as ratio > 1, reported apart),
    and the same ratio on the seeds' mean curves (`mean_curve`)."""
    out = {}
    for m in dict.fromkeys(r["modality"] for r in rows):
        rs = [r for r in rows if r["modality"] == m]
        ratios = [r["time_ratio"] for r in rs if r["time_ratio"] is not None]
        se = _mean_se(ratios)[1] if ratios else float("nan")
        mc = mean_curve(rs)
        out[m] = {"seeds": len(rs), "reached": len(ratios), "ratio_mean": statistics.mean(ratios) if ratios else None,
                  "ratio_se": se, "ratios": ratios, "v1_accuracy": [r["v1_accuracy"] for r in rs],
                  "v2_final_accuracy": [r["v2_curve"][-1]["accuracy"] for r in rs], "mean_curve": mc}
        last = mc["v2_stages"][-1]
        print(f"{m}: 2.0 reached 1.0's accuracy in {len(ratios)}/{len(rs)} seeds; time ratio "
              + (f"{out[m]['ratio_mean']:.2f} +- {se:.2f} (SE)" if ratios else "-")
              + f"; means over seeds: 1.0 {mc['v1_accuracy']:.3f} +- {mc['v1_accuracy_se']:.3f}, 2.0 end "
              f"{last['accuracy']:.3f} +- {last['accuracy_se']:.3f}, mean-curve time ratio "
              + (f"{mc['ratio']:.2f}" if mc["ratio"] is not None else "- (not reached)"), flush=True)
    return out


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--part", default="throughput", choices=["throughput", "accuracy", "both"])
    p.add_argument("--batch", type=int, default=2, help="(a) images per step for both versions")
    p.add_argument("--seeds", default="0", help="(b) comma-separated seeds")
    p.add_argument("--steps-scale", type=float, default=1.0, help="(b) multiply the demo steps by F")
    p.add_argument("--stages", default="1/12,1/6,1/4,1/3,1/2,2/3,1",
                   help="(b) fractions of the 2.0 run after which it is probed")
    args = p.parse_args()
    device = common.setup(args)
    h = common.header("data2vec 2.0 vs 1.0", args, device)
    common.print_header(h)
    out = {"header": h}
    if args.part in ("throughput", "both"):
        rows = [throughput(n, args.batch, device, args) for n in ("base", "base_v2")]
        ratio = rows[1]["predicted_per_s"] / rows[0]["predicted_per_s"]
        print(f"\nimage base: 2.0 predicts {ratio:.1f}x as many positions per second as 1.0")
        out["throughput"] = {"rows": rows, "ratio": ratio}
    if args.part in ("accuracy", "both"):
        out["accuracy"] = [time_to_accuracy(m, int(s), args) for m in common.split_list(args.modalities)
                           for s in common.split_list(args.seeds)]
        out["summary"] = summarize(out["accuracy"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
