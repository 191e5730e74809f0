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
masks: that holds when the batches carry precomputed `mask`s (shared by construction) and the data
pipeline draws nothing at random. Masks the model draws, random speech crops and image augmentations
come from per-process streams (seeded by seed and rank): with them, 1 and N processes train the same
way statistically, not with the same numbers.

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

On a GPU (each with a fallback): DataLoader workers with pinned memory (`num_workers=None`: auto, 0 on the
CPU; workers that die are replaced by loading in the main process), bf16 autocast (fp16 + GradScaler without
bf16), fused AdamW (`schedule.build_optimizer`; the default kernel where unsupported), and `compile="auto"`:
every Transformer block through torch.compile for runs of >= COMPILE_MIN_STEPS steps when Triton is there
(compile errors fall back to eager: torch._dynamo's suppress_errors).

Schedules span cfg.optim.total_steps whatever `steps` is: a run of fewer steps is a prefix of the full
run, and `resume=True` with a larger `steps` continues it. Only rank 0 writes files and shows tqdm.

Run folders (runs.py): nothing in `out_dir` changes before the config, options, checkpoint and data
were checked; with `overwrite=False` (the CLI's default) a folder holding a run is refused unless
`resume`; run files are never written through symbolic links. `TrainOptions.pipeline` (pipeline.run_info)
goes into every checkpoint, so the data set and the text tokenizer of a run travel with it, and a resume
with another one is refused (checkpoint.py).
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
from .checkpoint import check_fits, check_pipeline, checkpoint_config, read_checkpoint
from .config import Data2VecConfig
from .data2vec import Data2Vec
from .data2vec2 import build_model
from .distributed import DistInfo, ShardSampler, all_reduce_sum, barrier, gather_objects, init_distributed
from .errors import CheckpointError
from .runs import append_line, check_run_dir, read_metrics, run_file, write_text
from .schedule import build_optimizer, build_scheduler


@dataclass
class TrainOptions:
    steps: int | None = None  # stop after this many optimizer steps in all; None = cfg.optim.total_steps
    out_dir: str = "runs/pretrain"
    device: str = "auto"  # "auto" = cuda if available else cpu
    precision: str = "auto"  # "auto" | "bf16" | "fp16" | "fp32"; auto: bf16 / fp16 (older cuda) / fp32 (cpu)
    resume: bool = False  # continue from out_dir/checkpoint.pt if present
    overwrite: bool = True  # False: refuse an out_dir that holds a run unless `resume` (the CLI's default)
    log_every: int = 10  # a metrics line (means over the window) and the checks every N steps
    ckpt_every: int = 0  # 0 = only at the end
    compile: bool | str = "auto"  # torch.compile every Transformer block; "auto": on CUDA, long runs (resolve_compile)
    seed: int = 0
    num_workers: int | None = None  # DataLoader workers; None = auto (resolve_workers: 0 on CPU)
    progress: bool = True
    pipeline: dict | None = None  # saved in every checkpoint: what probe / resume rebuild the data with
    #                               (pipeline.run_info: modality, preset, dataset, limit, text tokenizer)


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
    start_step: int = 0  # the step this call started from (> 0 when resumed)


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


COMPILE_MIN_STEPS = 1000  # compiling a block costs seconds to a minute: worth it for longer runs only


def resolve_workers(num_workers: int | None, device: torch.device, world: int = 1) -> int:
    """DataLoader workers: `num_workers` if given; None = 0 on the CPU (the small sets load fastest in the
    main process, and the cores train), on CUDA min(8, CPU cores per rank - 1) (224-px augmentation and
    audio decoding would starve the GPU)."""
    if num_workers is not None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or None (auto), got {num_workers}")
        return num_workers
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(world, 1) - 1))


def resolve_compile(compile: bool | str, device: torch.device, steps: int) -> bool:
    """Whether to torch.compile the blocks: True / False as given; "auto" = on CUDA with Triton installed,
    for runs of at least COMPILE_MIN_STEPS steps."""
    if compile == "auto":
        import importlib.util

        return device.type == "cuda" and steps >= COMPILE_MIN_STEPS and importlib.util.find_spec("triton") is not None
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    return compile


def pretrain(cfg: Data2VecConfig, dataset, collate_fn=None, opts: TrainOptions | None = None,
             model: Data2Vec | None = None) -> TrainResult:
    """Pretrain `model` (default: a fresh Data2Vec(cfg), seeded) on `dataset` (items collated by
    `collate_fn` into a dict: source [B, ...], optional padding_mask bool [B, N] (True = pad), optional
    mask bool [B, T] (True = masked); other keys ignored). Under torchrun (WORLD_SIZE > 1) it joins the
    process group itself and trains with DDP. Returns the trained model and the logged metrics."""
    opts = opts or TrainOptions()
    return _pretrain(cfg, dataset, collate_fn, opts, model, init_distributed(opts.device))


def _check_options(opts: TrainOptions) -> None:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if opts.steps is not None and not (is_int(opts.steps) and opts.steps >= 1):
        raise ValueError(f"steps must be a positive integer (or None = cfg.optim.total_steps), got {opts.steps!r}")
    if not (is_int(opts.log_every) and opts.log_every >= 1 and is_int(opts.ckpt_every) and opts.ckpt_every >= 0):
        raise ValueError(f"need log_every >= 1 and ckpt_every >= 0, got {opts.log_every} and {opts.ckpt_every}")
    if not (opts.num_workers is None or (is_int(opts.num_workers) and opts.num_workers >= 0)) or not is_int(opts.seed):
        raise ValueError(f"need num_workers None (auto) or an integer >= 0, and an integer seed, got "
                         f"{opts.num_workers!r} and {opts.seed!r}")
    if opts.compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {opts.compile!r}")


def _pretrain(cfg, dataset, collate_fn, opts: TrainOptions, model, info: DistInfo) -> TrainResult:
    call_start, dev, world, o = time.perf_counter(), info.device, info.world_size, cfg.optim
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {dev} requested but CUDA is not available: use device='cpu' or 'auto'")
    cfg.validate()  # fields may have been edited in place since the config was built
    _check_options(opts)
    check_run_dir(opts.out_dir, opts.resume, opts.overwrite)  # nothing is written before every check passed
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

    resumed = opts.resume and ckpt_path.exists()
    if resumed:
        ck = read_checkpoint(ckpt_path)
        check_fits(ck, cfg, ckpt_path)
        check_pipeline(ck, opts.pipeline, ckpt_path)
        if ck["state"]["step"] > total:
            raise ValueError(f"{ckpt_path} is at step {ck['state']['step']}, past steps={total}: pass a larger "
                             f"steps to continue it, or --overwrite to start again")
        model.load_state_dict(ck["model"])
        kernels = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
        optimizer.load_state_dict(ck["optimizer"])
        for g, (fused, foreach) in zip(optimizer.param_groups, kernels):  # this device's kernels, not the saved ones
            g["fused"], g["foreach"] = fused, foreach
        scheduler.load_state_dict(ck["scheduler"])
        if scaler.is_enabled() and ck["scaler"]:
            scaler.load_state_dict(ck["scaler"])
        state.update(ck["state"])
        if len(ck["rng"]) == world:
            _set_rng_state(ck["rng"][info.rank], mask_gen, dev)
        elif info.is_main:
            tqdm.write(f"resuming {world} ranks from {len(ck['rng'])}: RNG streams reseeded, not restored")
    start_step = state["step"]
    wrapped = model
    if world > 1:  # the teacher has no trainable parameter, so DDP neither syncs nor waits for it
        wrapped = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                          find_unused_parameters=cfg.encoder.layerdrop > 0)
    # in place, block by block: the compute is there, and state_dict names stay unchanged;
    if resolve_compile(opts.compile, dev, total - state["step"]):
        for enc in (model.student, model.teacher.model):  # masking (Python loops), indexing and layer drop stay eager
            for block in enc.transformer.blocks:
                block.compile()
        import torch._dynamo as dynamo

        dynamo.config.suppress_errors = True  # a block that fails to compile runs eagerly
    amp = torch.autocast(dev.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                         enabled=precision != "fp32")
    params = [p for g in optimizer.param_groups for p in g["params"]]

    loader_gen, kw = torch.Generator(), dict(collate_fn=collate_fn, pin_memory=dev.type == "cuda")
    workers = resolve_workers(opts.num_workers, dev, world)
    if o.max_tokens > 0:  # the sampler's items are whole batches: state["sample"] counts batches
        min_size, max_size = collate_limits(collate_fn)
        sampler = TokenBatchSampler(dataset_sizes(dataset), o.max_tokens, max_size=max_size, min_size=min_size,
                                    info=info, group=o.batch_size, seed=opts.seed)

        def make_loader(n):
            return DataLoader(dataset, batch_sampler=sampler, generator=loader_gen, num_workers=n, **kw)
        loader = make_loader(workers)
        if len(loader) == 0:
            raise ValueError(f"the data set's {len(sampler.keep)} clips of >= {min_size} samples make fewer than "
                             f"one update of {o.batch_size} batches of <= {o.max_tokens} samples: use more data, a "
                             f"smaller cfg.optim.max_tokens or batch_size")
    else:
        sampler = ShardSampler(dataset, info, opts.seed)

        def make_loader(n):
            return DataLoader(dataset, batch_size=micro, sampler=sampler, drop_last=True, generator=loader_gen,
                              num_workers=n, **kw)
        loader = make_loader(workers)
    if len(loader) == 0:
        raise ValueError(f"the data set has {len(dataset)} items: too few for one micro-batch of {micro} per rank "
                         f"({world} ranks); use more data or a smaller cfg.optim.batch_size")
    if start_step >= total:  # resumed at the target: nothing to do, nothing written
        return TrainResult(model=model, seconds=time.perf_counter() - call_start, out_dir=out, start_step=start_step)
    barrier(info)  # every rank checked the run folder (check_run_dir) before rank 0 changes it
    if info.is_main:  # every check passed: now the run folder may change
        out.mkdir(parents=True, exist_ok=True)
        if not resumed:  # a fresh run (overwrite): the old run's files go
            for name in ("checkpoint.pt", "pipeline.json"):
                run_file(out, name).unlink(missing_ok=True)
        write_text(out, "config.json", json.dumps(cfg.to_dict(), indent=1))
        kept = read_metrics(metrics_path, upto=state["step"]) if resumed else []
        write_text(out, "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    def batches():  # endless; `state` always says where the next batch comes from
        nonlocal loader
        while True:
            sampler.set_epoch(state["epoch"])
            sampler.skip = state["sample"] // world  # the same global batches for any world size
            loader_gen.manual_seed(opts.seed * 100_003 + state["epoch"])  # worker seeds: a function of the epoch
            try:
                for b in loader:
                    state["sample"] += micro * world
                    yield b
            except RuntimeError as e:  # e.g. a worker killed (too little shared memory): load in this process
                if loader.num_workers == 0 or "DataLoader worker" not in str(e):
                    raise
                tqdm.write(f"DataLoader workers failed ({str(e).splitlines()[0]}); loading in the main process")
                loader = make_loader(0)
                continue
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
            append_line(metrics_path, json.dumps(rec))
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
                _save_checkpoint(ckpt_path, cfg, model, optimizer, scheduler, scaler, state, mask_gen, info, precision,
                                 opts.pipeline)
    finally:
        bar.close()
    return TrainResult(model=model, history=history, seconds=time.perf_counter() - call_start, out_dir=out,
                       start_step=start_step)


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


def _save_checkpoint(path: Path, cfg, model, optimizer, scheduler, scaler, state, mask_gen, info, precision,
                     pipeline: dict | None = None) -> None:
    rng = gather_objects(_rng_state(mask_gen, info.device), info)  # every rank's streams (a collective)
    if info.is_main:
        ckpt = {"cfg": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": dict(state),
                "rng": rng, "world_size": info.world_size, "precision": precision, "pipeline": pipeline}
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


def load_checkpoint(path: str | Path, map_location="cpu", ck: dict | None = None) -> Data2Vec:
    """Rebuild the Data2Vec model (student, head, EMA teacher) of a `pretrain` checkpoint, in eval mode
    (a data2vec 2.0 checkpoint gives its Data2Vec2 model, data2vec2.build_model).
    Raises CheckpointError (checkpoint.py) for a file that is not an intact d2v_mini checkpoint.
    `ck`: the checkpoint dict when it was read already (checkpoint.read_checkpoint)."""
    ck = read_checkpoint(path, map_location) if ck is None else ck
    model = build_model(checkpoint_config(ck, path))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit its own config ({str(e).splitlines()[0]}): "
                              f"the file is corrupted") from None
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
