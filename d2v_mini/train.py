"""Pretraining: the data2vec 1.0 loop, in one process or under torchrun with DDP.

    result = pretrain(cfg, dataset, collate_fn, TrainOptions(steps=300, out_dir="runs/speech"))
    result.history                                   # the lines of runs/speech/metrics.jsonl
    model = load_checkpoint("runs/speech/checkpoint.pt")

One optimizer step (cfg.optim.batch_size samples = world x accum_steps micro-batches):
    for each micro-batch:   out = model(batch) under torch.amp;   backward(out.loss * out.num_masked)
    gradients *= world / (masked positions in the whole global batch)    # fairseq: sum / sample_size
    unscale (fp16) -> clip -> AdamW step -> LR step -> EMA step (teacher, fp32, unwrapped model)
                                           (LR and EMA step even when fp16's GradScaler skips an update)
so a step gives the same loss and gradient for any world size and accumulation, given the same
masks (model-drawn masks come from a per-rank generator; precomputed `mask`s in the batch are shared).

The trainer adds no per-step host sync: each step's loss, variances (means over micro-batches and
ranks) and gradient norm stay on the device until the next log step (every `log_every` steps, and
before every checkpoint). There every step of the window is checked: a non-finite loss raises NonFiniteLossError, a collapsed teacher (fairseq's
guard, cfg.guard) raises CollapseError, naming the step. A run thus stops at most log_every - 1 steps
late (log_every=1 stops at once) and never writes a checkpoint with a bad step in it.

Data: the trainer owns the DataLoader. Every epoch is a permutation seeded by (seed, epoch), cut into
per-rank shards (distributed.ShardSampler), incomplete batches dropped. With cfg.optim.max_tokens > 0
(speech) batches hold at most max_tokens samples instead of a fixed number of clips, fairseq-style
(batching.TokenBatchSampler), and one step is batch_size = world x accum_steps such batches. A
checkpoint (written to a temporary file, then renamed) holds step, epoch, samples (token batching:
batches) consumed in the epoch, model (student, head, teacher with num_updates), optimizer, LR scheduler,
GradScaler and every rank's RNG states (torch, CUDA, python, numpy, mask generator): resuming skips
the consumed batches and continues exactly (bit-exact with num_workers=0; with workers, data-side
randomness is only reseeded per epoch).

Schedules span cfg.optim.total_steps whatever `steps` is: a run of fewer steps is a prefix of the full
run, and `resume=True` with a larger `steps` continues it. Only rank 0 writes files and shows tqdm.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batching import TokenBatchSampler, check_token_update, collate_limits, dataset_sizes
from .config import Data2VecConfig
from .data2vec import Data2Vec
from .data2vec2 import build_model
from .distributed import DistInfo, ShardSampler, all_reduce_sum, barrier, gather_objects, init_distributed
from .schedule import build_optimizer, build_scheduler


@dataclass
class TrainOptions:
    steps: int | None = None  # stop after this many optimizer steps in all; None = cfg.optim.total_steps
    out_dir: str = "runs/pretrain"
    device: str = "auto"  # "auto" = cuda if available else cpu
    precision: str = "auto"  # "auto" | "bf16" | "fp16" | "fp32"; auto: bf16 / fp16 (older cuda) / fp32 (cpu)
    resume: bool = False  # continue from out_dir/checkpoint.pt if present
    log_every: int = 10  # a metrics line (means over the window) and the checks every N steps
    ckpt_every: int = 0  # 0 = only at the end
    compile: bool = False  # torch.compile every Transformer block (student and teacher)
    seed: int = 0
    num_workers: int = 0
    progress: bool = True


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf."""


class CollapseError(RuntimeError):
    """The teacher's targets (or the predictions) lost their variance (fairseq's collapse guard)."""


@dataclass
class TrainResult:
    model: Data2Vec  # the unwrapped model (student, head, teacher) after the last step
    history: list[dict] = field(default_factory=list)  # the metrics lines logged by this call
    seconds: float = 0.0  # wall time of this call
    out_dir: Path = Path(".")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA with bf16, "fp16" on older CUDA, "fp32" on CPU; checks explicit choices."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16', 'fp16' or 'fp32', got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support: use precision='fp16' (with a GradScaler) or 'fp32'")
    return precision


def pretrain(cfg: Data2VecConfig, dataset, collate_fn=None, opts: TrainOptions | None = None,
             model: Data2Vec | None = None) -> TrainResult:
    """Pretrain `model` (default: a fresh Data2Vec(cfg), seeded) on `dataset` (items collated by
    `collate_fn` into a dict: source [B, ...], optional padding_mask bool [B, N] (True = pad), optional
    mask bool [B, T] (True = masked); other keys ignored). Under torchrun (WORLD_SIZE > 1) it joins the
    process group itself and trains with DDP. Returns the trained model and the logged metrics."""
    opts = opts or TrainOptions()
    return _pretrain(cfg, dataset, collate_fn, opts, model, init_distributed(opts.device))


def _pretrain(cfg, dataset, collate_fn, opts: TrainOptions, model, info: DistInfo) -> TrainResult:
    call_start, dev, world, o = time.perf_counter(), info.device, info.world_size, cfg.optim
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {dev} requested but CUDA is not available: use device='cpu' or 'auto'")
    if opts.log_every < 1 or opts.ckpt_every < 0:
        raise ValueError(f"need log_every >= 1 and ckpt_every >= 0, got {opts.log_every} and {opts.ckpt_every}")
    if o.max_tokens > 0:  # batch_size counts micro-batches of <= max_tokens samples (d2v_mini/batching.py)
        check_token_update(o.batch_size, o.accum_steps, world)
    elif o.batch_size % (world * o.accum_steps):
        raise ValueError(f"cfg.optim.batch_size {o.batch_size} (the global batch of one optimizer step) must be "
                         f"divisible by world size {world} x accum_steps {o.accum_steps}")
    micro = 1 if o.max_tokens > 0 else o.batch_size // (world * o.accum_steps)  # per-rank items of the sampler
    total = o.total_steps if opts.steps is None else opts.steps
    precision = resolve_precision(opts.precision, dev)
    out = Path(opts.out_dir)
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.jsonl"

    if model is None:
        torch.manual_seed(opts.seed)  # the same initial weights on every rank
        model = build_model(cfg)  # Data2Vec, or Data2Vec2 for a 2.0 config
    elif any(getattr(model.cfg, k) != getattr(cfg, k) for k in ("modality", "encoder", "targets", "ema", "loss")):
        raise ValueError("`model` was built from a different config than `cfg`: pass cfg=model.cfg "
                         "(optim, guard and masking fields may differ)")
    model.to(dev).train()
    seeds = np.random.SeedSequence([opts.seed, info.rank]).generate_state(2)  # per-rank dropout / mask streams
    torch.manual_seed(int(seeds[0]))
    random.seed(int(seeds[0]))
    np.random.seed(int(seeds[0]))
    mask_gen = torch.Generator().manual_seed(int(seeds[1]))
    optimizer, scaler = build_optimizer(model, o), torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    scheduler = build_scheduler(optimizer, o)
    state = {"step": 0, "epoch": 0, "sample": 0, "seconds": 0.0}  # sample: of the epoch's, consumed by all ranks

    if opts.resume and ckpt_path.exists():
        ck = _read(ckpt_path)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler.is_enabled() and ck["scaler"]:
            scaler.load_state_dict(ck["scaler"])
        state.update(ck["state"])
        if len(ck["rng"]) == world:
            _set_rng_state(ck["rng"][info.rank], mask_gen, dev)
        elif info.is_main:
            tqdm.write(f"resuming {world} ranks from {len(ck['rng'])}: RNG streams reseeded, not restored")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        old = metrics_path.read_text().splitlines() if opts.resume and metrics_path.exists() else []
        metrics_path.write_text("".join(f"{ln}\n" for ln in old if json.loads(ln)["step"] <= state["step"]))

    wrapped = model
    if world > 1:  # the teacher has no trainable parameter, so DDP neither syncs nor waits for it
        wrapped = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                          find_unused_parameters=cfg.encoder.layerdrop > 0)
    if opts.compile:  # in place, block by block: the compute is there, and state_dict names stay unchanged;
        for enc in (model.student, model.teacher.model):  # masking (Python loops), indexing and layer drop stay eager
            for block in enc.transformer.blocks:
                block.compile()
    amp = torch.autocast(dev.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                         enabled=precision != "fp32")
    params = [p for g in optimizer.param_groups for p in g["params"]]

    loader_gen, kw = torch.Generator(), dict(collate_fn=collate_fn, num_workers=opts.num_workers,
                                             pin_memory=dev.type == "cuda")
    if o.max_tokens > 0:  # the sampler's items are whole batches: state["sample"] counts batches
        min_size, max_size = collate_limits(collate_fn)
        sampler = TokenBatchSampler(dataset_sizes(dataset), o.max_tokens, max_size=max_size, min_size=min_size,
                                    info=info, group=o.batch_size, seed=opts.seed)
        loader = DataLoader(dataset, batch_sampler=sampler, generator=loader_gen, **kw)
        if len(loader) == 0:
            raise ValueError(f"the data set's {len(sampler.keep)} clips of >= {min_size} samples make fewer than "
                             f"one update of {o.batch_size} batches of <= {o.max_tokens} samples: use more data, a "
                             f"smaller cfg.optim.max_tokens or batch_size")
    else:
        sampler = ShardSampler(dataset, info, opts.seed)
        loader = DataLoader(dataset, batch_size=micro, sampler=sampler, drop_last=True, generator=loader_gen, **kw)
    if len(loader) == 0:
        raise ValueError(f"the data set has {len(dataset)} items: too few for one micro-batch of {micro} per rank "
                         f"({world} ranks); use more data or a smaller cfg.optim.batch_size")

    def batches():  # endless; `state` always says where the next batch comes from
        while True:
            sampler.set_epoch(state["epoch"])
            sampler.skip = state["sample"] // world  # the same global batches for any world size
            loader_gen.manual_seed(opts.seed * 100_003 + state["epoch"])  # worker seeds: a function of the epoch
            for b in loader:
                state["sample"] += micro * world
                yield b
            state["epoch"], state["sample"] = state["epoch"] + 1, 0

    history, pending, base_seconds = [], [], state["seconds"]  # training time of earlier (resumed) calls
    # TQDM_DISABLE=1 (CI, executed notebooks) is read here: tqdm.notebook ignores it (it forces disable=False)
    quiet = os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    bar = tqdm(total=total, initial=state["step"], desc="pretrain", dynamic_ncols=True,
               disable=quiet or not (opts.progress and info.is_main))

    def flush():  # one device sync: check every pending step, log the window's means
        rows = torch.stack([v for _, v, _, _ in pending]).cpu().tolist()
        for (step, _, lr, tau), (loss, tvar, pvar, _) in zip(pending, rows):
            _check(cfg, step, loss, tvar, pvar, lr)
        n = len(rows)
        mean = [sum(r[i] for r in rows) / n for i in range(4)]
        step, _, lr, tau = pending[-1]
        rec = dict(step=step, loss=mean[0], target_var=mean[1], pred_var=mean[2], ema_decay=tau, lr=lr,
                   grad_norm=mean[3], seconds=round(base_seconds + time.perf_counter() - call_start, 3))
        history.append(rec)
        pending.clear()
        if info.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix({"loss": f"{rec['loss']:.4f}", "tvar": f"{rec['target_var']:.3f}",
                             "pvar": f"{rec['pred_var']:.3f}", "tau": f"{tau:.5f}"}, refresh=False)

    it = batches()
    try:
        while state["step"] < total:
            sums = torch.zeros(4, device=dev)  # summed loss, masked positions, target_var, pred_var
            for i in range(o.accum_steps):
                batch = _inputs(next(it), dev)
                last = i == o.accum_steps - 1
                with wrapped.no_sync() if world > 1 and not last else contextlib.nullcontext():
                    with amp:
                        res = wrapped(**batch, generator=mask_gen)
                    scaler.scale(res.loss * res.num_masked).backward()
                n = res.loss.new_tensor(float(res.num_masked))
                sums += torch.stack([res.loss.detach().float() * n, n, res.target_var.float(), res.pred_var.float()])
            all_reduce_sum(sums, info)
            count = sums[1].clamp_min(1.0)
            scaler.unscale_(optimizer)
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], world / count)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, o.clip_norm if o.clip_norm > 0 else math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            tau = model.ema_step()  # after the optimizer step, on the unwrapped model: the same on every rank
            state["step"] += 1
            k = world * o.accum_steps
            pending.append((state["step"], torch.stack([sums[0] / count, sums[2] / k, sums[3] / k,
                                                        grad_norm.float()]), lr, tau))
            bar.update(1)
            save = state["step"] == total or (opts.ckpt_every > 0 and state["step"] % opts.ckpt_every == 0)
            if save or state["step"] % opts.log_every == 0:
                flush()
            if save:
                state["seconds"] = base_seconds + time.perf_counter() - call_start
                _save_checkpoint(ckpt_path, cfg, model, optimizer, scheduler, scaler, state, mask_gen, info, precision)
    finally:
        bar.close()
    return TrainResult(model=model, history=history, seconds=time.perf_counter() - call_start, out_dir=out)


def _check(cfg: Data2VecConfig, step: int, loss: float, tvar: float, pvar: float, lr: float) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite loss ({loss}) at step {step} (lr {lr:.3g}): try a lower learning rate (cfg.optim.lr = "
            f"{cfg.optim.lr:g}), gradient clipping (cfg.optim.clip_norm = {cfg.optim.clip_norm:g}), a longer "
            f"warm-up, bf16 or fp32 instead of fp16, and check the inputs for NaN/inf. The loss is checked every "
            f"log_every steps; the last checkpoint was written before this step.")
    g = cfg.guard
    low_t = g.min_target_var > 0 and tvar < g.min_target_var
    low_p = g.min_pred_var > 0 and pvar < g.min_pred_var
    if step > g.after_steps and (low_t or low_p):
        what = (f"target_var {tvar:.4g} < min_target_var {g.min_target_var:g}" if low_t
                else f"pred_var {pvar:.4g} < min_pred_var {g.min_pred_var:g}")
        raise CollapseError(
            f"teacher collapsed at step {step}: {what} (target_var {tvar:.4g}, pred_var {pvar:.4g}). The targets "
            f"or predictions lost their variance across positions: lower the learning rate (cfg.optim.lr = "
            f"{cfg.optim.lr:g}), lengthen the warm-up, check the data (constant or silent inputs), or change the "
            f"thresholds in cfg.guard (0 disables a check).")


def _inputs(batch, dev: torch.device) -> dict:
    """The model's inputs from a collated batch dict, on `dev`."""
    if not isinstance(batch, dict) or "source" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise TypeError(f"collate_fn must return a dict with 'source' (and optionally 'padding_mask', 'mask'), "
                        f"got {got}")
    keys = [k for k in ("source", "padding_mask", "mask") if batch.get(k) is not None]
    return {k: batch[k].to(dev, non_blocking=True) for k in keys}


def _rng_state(mask_gen: torch.Generator, dev: torch.device) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "mask": mask_gen.get_state(),
             "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(gauss))}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict, mask_gen: torch.Generator, dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    mask_gen.set_state(state["mask"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def _save_checkpoint(path: Path, cfg, model, optimizer, scheduler, scaler, state, mask_gen, info, precision) -> None:
    rng = gather_objects(_rng_state(mask_gen, info.device), info)  # every rank's streams (a collective)
    if info.is_main:
        ckpt = {"cfg": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": dict(state),
                "rng": rng, "world_size": info.world_size, "precision": precision}
        atomic_save(ckpt, path)
    barrier(info)  # no rank goes on (and e.g. resumes from the file) before the checkpoint is in place


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file next to `path`, then rename: `path` is never half written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: str | Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | Path, map_location="cpu") -> Data2Vec:
    """Rebuild the Data2Vec model (student, head, EMA teacher) of a `pretrain` checkpoint, in eval mode."""
    ck = _read(path, map_location)
    model = build_model(Data2VecConfig.from_dict(ck["cfg"]))
    model.load_state_dict(ck["model"])
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
