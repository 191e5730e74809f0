"""Shared helpers for the benchmark scripts: arguments, precision, timing, synthetic batches, tables.

Timing rule: every timed region starts and ends with `sync(device)` (torch.cuda.synchronize on a GPU,
a no-op on the CPU), runs `warmup` untimed times first, and reports the MEDIAN of `repeats` runs.
Wall-clock numbers depend on the machine and its load; ratios measured in the same run are the
meaningful part. Nothing here asserts on a time.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import math

import torch
from torch import Tensor

from d2v_mini.config import Data2VecConfig
from d2v_mini.data2vec import Data2Vec
from d2v_mini.presets import preset

MODALITIES = ("speech", "image", "text")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------- arguments
def base_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes (each script adds its own)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--modalities", default=",".join(MODALITIES), help="comma-separated subset of speech,image,text")
    p.add_argument("--presets", default="tiny", help="comma-separated presets, e.g. tiny,base")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    p.add_argument("--precision", default="fp32", choices=list(DTYPES),
                   help="torch.autocast dtype for the forward passes (fp16 adds a GradScaler)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave torch's default)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed iterations (the median is reported)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="speech clip length in seconds (0 = the preset's crop: 2 s tiny, 20 s base)")
    p.add_argument("--tokens", type=int, default=0, help="text sequence length (0 = the preset's crop: 64 / 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke-test mode: tiny preset, batch 2, 1 warmup, 2 repeats")
    p.add_argument("--json", default="", metavar="PATH", help="also write the header and rows to this JSON file")
    return p


def split_list(s: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """'a,b' -> ['a', 'b'], refusing names outside `allowed`."""
    items = [x.strip() for x in s.split(",") if x.strip()]
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise SystemExit(f"unknown name(s) {bad}: expected a comma-separated subset of {list(allowed)}")
    return items


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and --seed and return the device (refusing cuda when there is none)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False")
    return torch.device(args.device)


# ------------------------------------------------------------------------------------- precision
def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16 / fp16, a null context for fp32 (nanoGPT's single precision path)."""
    dtype = DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


# ---------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Run `fn` `warmup` times untimed, then `repeats` times; returns the wall times in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return times


class PhaseTimer:
    """Times named phases of one step: `with timer("student"): ...`; `timer.new_step()` between steps.

    Each phase synchronises the device at entry and exit, so on a GPU the phases do not overlap
    (a real step would overlap a little more: the sum of the phases is an upper bound)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.steps: list[dict[str, float]] = []

    def new_step(self) -> None:
        self.steps.append({})

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        step = self.steps[-1]
        step[name] = step.get(name, 0.0) + 1e3 * (time.perf_counter() - t0)

    def medians(self, skip: int = 0) -> dict[str, float]:
        """Per phase, the median over the steps after the first `skip` (the warmup) in ms."""
        steps = self.steps[skip:]
        return {k: statistics.median(s[k] for s in steps) for k in steps[0]}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak allocated CUDA memory since the last reset (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


# ---------------------------------------------------------------------------------- training step
def make_optimizer(model: Data2Vec) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's AdamW and LR schedule (d2v_mini.schedule), as the trainer builds them."""
    from d2v_mini.schedule import build_optimizer, build_scheduler

    opt = build_optimizer(model, model.cfg.optim)
    return opt, build_scheduler(opt, model.cfg.optim)


def optimizer_step(model: Data2Vec, opt, sched, scaler: torch.amp.GradScaler, num_masked: int) -> None:
    """What d2v_mini.train does after backward: unscale, divide the gradients by the number of masked
    positions (the loss was multiplied by it), clip, AdamW step, zero the gradients, LR step."""
    params = [p for g in opt.param_groups for p in g["params"]]
    scaler.unscale_(opt)
    torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / max(num_masked, 1))
    clip = model.cfg.optim.clip_norm
    torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sched.step()


def train_step(model: Data2Vec, source: Tensor, opt, sched, scaler: torch.amp.GradScaler, precision: str,
               generator: torch.Generator | None = None) -> Tensor:
    """One whole pretraining step, as d2v_mini.train runs it (one micro-batch, one process):
    forward under autocast -> backward(loss * num_masked) -> optimizer_step -> EMA step. Returns the loss."""
    with autocast(source.device, precision):
        out = model(source, generator=generator)
    scaler.scale(out.loss * out.num_masked).backward()
    optimizer_step(model, opt, sched, scaler, out.num_masked)
    model.ema_step()
    return out.loss.detach()


# -------------------------------------------------------------------------------------- batches
def bench_config(modality: str, name: str) -> Data2VecConfig:
    """The preset, unchanged (a benchmark measures the recipe as it is)."""
    return preset(modality, name)


def input_length(cfg: Data2VecConfig, seconds: float = 0.0, tokens: int = 0) -> int:
    """Samples per clip (speech), tokens per sequence (text) or the image side (image)."""
    if cfg.modality == "speech":
        return int(seconds * cfg.encoder.sample_rate) if seconds > 0 else cfg.crop
    if cfg.modality == "text":
        return tokens if tokens > 0 else cfg.crop
    return cfg.encoder.image_size


def make_batch(cfg: Data2VecConfig, batch: int, device: torch.device, *, seconds: float = 0.0, tokens: int = 0,
               generator: torch.Generator | None = None) -> Tensor:
    """A synthetic batch of the preset's input shape (timing does not depend on the values).

    speech: float [B, N] waveform (N = seconds * 16 kHz, default the preset's crop);
    image:  float [B, 3, S, S] (S = cfg.encoder.image_size);
    text:   long [B, T] ids: <s> random non-special ids </s>, never `<mask>`, no padding."""
    enc = cfg.encoder
    n = input_length(cfg, seconds, tokens)
    if cfg.modality == "speech":
        return torch.randn(batch, n, generator=generator).to(device)
    if cfg.modality == "image":
        return torch.randn(batch, enc.in_chans, n, n, generator=generator).to(device)
    ids = torch.randint(4, enc.vocab_size - 1, (batch, n), generator=generator)  # ids 0..3: specials
    ids = ids + (ids >= enc.mask_idx).long() * int(enc.mask_idx >= 4)  # skip over <mask>
    ids[:, 0], ids[:, -1] = enc.bos_idx, enc.eos_idx
    return ids.to(device)


def units(cfg: Data2VecConfig, source: Tensor) -> dict[str, float]:
    """What one batch holds: samples, plus seconds of audio (speech) or tokens (text)."""
    out = {"samples": float(source.shape[0])}
    if cfg.modality == "speech":
        out["audio_s"] = source.numel() / cfg.encoder.sample_rate
    elif cfg.modality == "text":
        out["tokens"] = float(source.numel())
    return out


# ---------------------------------------------------------------------------------------- output
def header(title: str, args: argparse.Namespace, device: torch.device, extra: dict | None = None) -> dict:
    """The facts a reader needs to judge the numbers (versions, device, threads, precision)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    h = {"benchmark": title, "date": datetime.datetime.now().isoformat(timespec="seconds"),
         "torch": torch.__version__, "python": platform.python_version(), "device": f"{device.type} ({name})",
         "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "precision": args.precision,
         "warmup": args.warmup, "repeats": args.repeats}
    h.update(extra or {})
    return h


def print_header(h: dict) -> None:
    print(f"# {h['benchmark']}")
    for k, v in h.items():
        if k != "benchmark":
            print(f"#   {k}: {v}")
    print()


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table; floats get 2 decimals (3 significant digits below 1), None prints '-'."""
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1 else f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def write_json(path: str, h: dict, rows: list[dict]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"header": h, "rows": rows}, f, indent=1)
        print(f"\nwrote {path}")


# ---------------------------------------------------------------------------------- shared runs
def training_setup(cfg: Data2VecConfig, batch: int, device: torch.device, args: argparse.Namespace):
    """What a timed training step needs: (model in train mode, optimizer, LR scheduler, grad scaler,
    a synthetic batch `source`, the seeded generator that made it and then draws the masks), with
    peak-memory tracking reset."""
    g = torch.Generator().manual_seed(args.seed)
    model = Data2Vec(cfg).to(device).train()
    opt, sched = make_optimizer(model)
    scaler = grad_scaler(device, args.precision)
    source = make_batch(cfg, batch, device, seconds=args.seconds, tokens=args.tokens, generator=g)
    reset_peak_memory(device)
    return model, opt, sched, scaler, source, g


def run_grid(args: argparse.Namespace, device: torch.device, bench_one: Callable, describe: Callable) -> list[dict]:
    """bench_one(cfg, batch, device, args) for every preset x modality x batch size (batch 0 = the preset's
    micro-batch, capped at 16); prints `describe(row)` after each."""
    rows = []
    for name in split_list(args.presets):
        for modality in split_list(args.modalities, MODALITIES):
            cfg = bench_config(modality, name)
            for b in (int(x) for x in split_list(args.batch)):
                b = b or min(cfg.optim.batch_size // cfg.optim.accum_steps, 16)
                rows.append(bench_one(cfg, b, device, args))
                print(f"  done {modality}/{name} batch {b}: {describe(rows[-1])}", flush=True)
    return rows
