"""GPU check: the notebooks in the `small` profile, a few base-preset steps per modality, and throughput with
model FLOP utilisation (MFU), on one CUDA GPU, written to one JSON file (`make gpu-check`).

    python benchmarks/gpu_check.py                            # everything, -> runs/gpu_check.json
    python benchmarks/gpu_check.py --parts base,throughput    # skip the notebooks
    python benchmarks/gpu_check.py --dry-run --gpu-gib 16     # the plan only (no GPU needed; what CI runs)

Parts:
  notebooks   each notebooks/0*.ipynb executed by nbconvert with D2V_PROFILE=small into a temporary folder
              (the committed notebooks stay untouched), under a time cap (--notebook-cap seconds each);
              records the wall time and whether it finished. Goal: ~5 min on an A100, ~15 on a T4.
  base        `train.pretrain` on synthetic data of each base preset's input shape (images 224 px, speech
              crops of 20 s batched by samples, text blocks of 512), bf16, the planner's micro-batch and
              accumulation for this GPU (`planner.fit_to_gpu`), --base-steps updates: the trainer's GPU path
              (workers, pinned memory, autocast, fused AdamW), finite losses, the peak memory against
              `scaling.memory_estimate`.
  throughput  bench_throughput's whole training steps (one micro-batch, bf16) of each base preset at the
              planner's micro-batch (capped by --max-batch), samples/s, and MFU = train FLOPs per sample
              (`scaling.flops_per_sample`) x samples/s / the GPU's peak dense bf16 FLOP/s (PEAK_TFLOPS, or
              --peak-tflops). Goal: ViT-B >= 45%.
Nothing here asserts on a time; the goals are reported as met or not.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

PARTS = ("notebooks", "base", "throughput")
MODALITIES = ("speech", "image", "text")
# peak dense tensor-core TFLOP/s in bf16 (fp16 where the GPU has no bf16), from the vendors' data sheets
PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125, "A6000": 155,
               "4090": 165, "3090": 71, "V100": 125, "T4": 65}
MFU_GOAL = {"image": 0.45}  # ViT-B in bf16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check.json", help="the JSON file written")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--notebooks", default="00,01,02,03,04,05,06", help="notebook numbers to run")
    p.add_argument("--notebook-cap", type=int, default=1200, help="seconds per notebook before it is stopped")
    p.add_argument("--modalities", default=",".join(MODALITIES))
    p.add_argument("--base-steps", type=int, default=3, help="optimizer steps per base preset")
    p.add_argument("--max-batch", type=int, default=64, help="largest throughput micro-batch")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks in the throughput and base runs")
    p.add_argument("--gpu-gib", type=float, default=0.0, help="GPU memory for the plan (0 = this GPU's)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak bf16 TFLOP/s (0 = from PEAK_TFLOPS)")
    p.add_argument("--dry-run", action="store_true", help="write the plan and stop (no GPU needed)")
    args = p.parse_args(argv)
    args.parts = _subset(args.parts, PARTS, "--parts")
    args.modalities = _subset(args.modalities, MODALITIES, "--modalities")
    args.notebooks = [n.strip() for n in args.notebooks.split(",") if n.strip()]
    if args.base_steps < 1 or args.max_batch < 1 or args.notebook_cap < 1:
        p.error("--base-steps, --max-batch and --notebook-cap must be >= 1")
    return args


def _subset(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown {bad or 'empty list'}; expected a comma-separated subset of {allowed}")
    return items


def peak_tflops(device_name: str, override: float = 0.0) -> float | None:
    """The GPU's peak dense bf16 TFLOP/s from its name (PEAK_TFLOPS), or `override`; None if unknown."""
    if override > 0:
        return override
    return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in device_name.lower()), None)


def make_plan(args: argparse.Namespace, gpu_gib: float) -> dict:
    """What the check will run, from the planner (no GPU needed)."""
    from d2v_mini.planner import plan_run
    from d2v_mini.presets import preset

    notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")
                       if p.name[:2] in args.notebooks)
    base, throughput = {}, {}
    for m in args.modalities:
        p = plan_run(preset(m, "base"), gpus=1, gpu_gib=gpu_gib, precision="bf16")
        base[m] = p.as_dict()
        micro = max(1, min(p.micro_batch, args.max_batch))
        throughput[m] = {"batch": micro, "precision": "bf16"}
    return {"gpu_gib": gpu_gib, "parts": args.parts, "notebooks": notebooks if "notebooks" in args.parts else [],
            "notebook_cap_s": args.notebook_cap, "base_steps": args.base_steps if "base" in args.parts else 0,
            "base": base if "base" in args.parts else {},
            "throughput": throughput if "throughput" in args.parts else {}}


# ------------------------------------------------------------------------------------------ parts
def run_notebooks(plan: dict, cap: int) -> list[dict]:
    """Execute each notebook in the small profile into a temporary folder, under a time cap."""
    rows = []
    env = dict(os.environ, D2V_PROFILE="small", TQDM_DISABLE="1")
    with tempfile.TemporaryDirectory() as tmp:
        for nb in plan["notebooks"]:
            cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output-dir", tmp,
                   f"--ExecutePreprocessor.timeout={cap}", str(ROOT / nb)]
            start = time.perf_counter()
            try:
                proc = subprocess.run(cmd, cwd=ROOT / "notebooks", env=env, capture_output=True, text=True,
                                      timeout=cap + 60)
                ok, tail = proc.returncode == 0, (proc.stderr or "")[-1500:]
            except subprocess.TimeoutExpired:
                ok, tail = False, f"stopped after the cap of {cap} s"
            rows.append({"notebook": nb, "seconds": round(time.perf_counter() - start, 1), "finished": ok,
                         "error": None if ok else tail})
            print(f"  {nb}: {'ok' if ok else 'FAILED'} in {rows[-1]['seconds']:.0f} s", flush=True)
    return rows


class Synthetic:
    """Random inputs of a base preset's shape, made from the index (nothing stored): items dict(source)."""

    def __init__(self, cfg, n: int):
        self.cfg, self.n = cfg, n  # picklable (no module attributes): DataLoader workers may be spawned
        if cfg.modality == "speech":
            self.sizes = [cfg.crop] * n  # crops of 20 s: the token-batch sampler reads these

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        import common

        g = torch.Generator().manual_seed(i)
        return {"source": common.make_batch(self.cfg, 1, torch.device("cpu"), generator=g)[0]}


def run_base(plan: dict, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    """A few trainer steps of each base preset in bf16 with the planned batching (see the docstring)."""
    import torch

    from d2v_mini.data import AudioCollator
    from d2v_mini.pipeline import SourceOnly
    from d2v_mini.planner import Plan, apply_plan
    from d2v_mini.presets import preset
    from d2v_mini.scaling import memory_estimate
    from d2v_mini.train import TrainOptions, pretrain

    rows = []
    for m, p in plan["base"].items():
        cfg = apply_plan(preset(m, "base"), Plan(**{k: p[k] for k in Plan.__dataclass_fields__}))
        per_update = p["global_batch"] * (p["micro_batch"] if p["max_tokens"] else 1)
        collate = SourceOnly(AudioCollator(max_samples=cfg.crop)) if m == "speech" else None
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        res = pretrain(cfg, Synthetic(cfg, 2 * per_update), collate,
                       TrainOptions(steps=args.base_steps, out_dir=str(out_dir / f"base-{m}"), precision=args.precision,
                                    compile=args.compile, log_every=1, progress=False))
        est = memory_estimate(cfg, p["micro_batch"])["total"] / 2 ** 30
        rows.append({"modality": m, "steps": args.base_steps, "accum_steps": p["accum_steps"],
                     "micro_batch": p["micro_batch"], "max_tokens": p["max_tokens"],
                     "seconds": round(time.perf_counter() - start, 1),
                     "losses": [h["loss"] for h in res.history],
                     "finite": all(h["loss"] == h["loss"] and abs(h["loss"]) < float("inf") for h in res.history),
                     "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "estimate_gib": est})
        print(f"  base {m}: {rows[-1]}", flush=True)
    return rows


def run_throughput(plan: dict, args: argparse.Namespace, peak: float | None) -> list[dict]:
    """Whole training steps (common.train_step: one micro-batch, bf16, as bench_throughput times them) of each
    base preset at the planned micro-batch, blocks compiled with --compile; samples/s, TFLOP/s and MFU."""
    import torch

    import common
    from d2v_mini.presets import preset
    from d2v_mini.scaling import flops_per_sample

    dev = torch.device("cuda")
    bargs = argparse.Namespace(precision=args.precision, seed=0, seconds=0.0, tokens=0)
    rows = []
    for m, t in plan["throughput"].items():
        cfg = preset(m, "base")
        model, opt, sched, scaler, source, g = common.training_setup(cfg, t["batch"], dev, bargs)
        if args.compile:
            for enc in (model.student, model.teacher.model):
                for block in enc.transformer.blocks:
                    block.compile()
        losses = []
        ms = common.median(common.time_ms(
            lambda: losses.append(common.train_step(model, source, opt, sched, scaler, args.precision, g)),
            dev, args.warmup, args.repeats))
        gflops = flops_per_sample(cfg)["train_flops"] / 1e9
        samples_per_s = 1e3 * t["batch"] / ms
        tflops = gflops * samples_per_s / 1e3
        rows.append({"modality": m, "preset": "base", "batch": t["batch"], "compile": args.compile,
                     "precision": args.precision, "step_ms": ms,
                     "samples_per_s": samples_per_s, "train_gflops_per_sample": gflops, "tflops": tflops,
                     "mfu": tflops / peak if peak else None, "loss": float(losses[-1]),
                     "peak_mem_MiB": common.peak_memory_mib(dev)})
        print(f"  throughput {m}: {samples_per_s:.1f} samples/s, {tflops:.1f} TFLOP/s, MFU "
              f"{'unknown GPU' if not peak else f'{tflops / peak:.1%}'}", flush=True)
        del model, opt, source
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "none"
    args.precision = "bf16" if not cuda or torch.cuda.is_bf16_supported() else "fp16"  # T4, V100: fp16
    gib = args.gpu_gib or (torch.cuda.get_device_properties(0).total_memory / 2 ** 30 if cuda else 80.0)
    peak = peak_tflops(name, args.peak_tflops)
    result = {"header": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
                         "gpu": name, "gpu_gib": round(gib, 1), "peak_bf16_tflops": peak,
                         "precision": args.precision,
                         "dry_run": args.dry_run},
              "plan": make_plan(args, gib)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:
        if not cuda:
            raise SystemExit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); "
                             "use --dry-run to see the plan")
        plan = result["plan"]
        if "notebooks" in args.parts:
            result["notebooks"] = run_notebooks(plan, args.notebook_cap)
        if "base" in args.parts:
            result["base"] = run_base(plan, args, out.parent / "gpu_check")
        if "throughput" in args.parts:
            result["throughput"] = run_throughput(plan, args, peak)
            mfu = {r["modality"]: r["mfu"] for r in result["throughput"]}
            result["goals"] = {f"{m}_mfu>={g}": (mfu.get(m) is not None and mfu[m] >= g) for m, g in MFU_GOAL.items()}
    out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["plan"], indent=1) if args.dry_run else "", f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
