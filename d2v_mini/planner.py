"""Plan a run on G GPUs of a given memory: the micro-batch and accumulation that give the recipe's update.

    p = plan_run(preset("image", "base"), gpus=8, gpu_gib=80)   # Plan(global_batch=2048, micro_batch=..., ...)
    print(format_plan(p))                                      # what `python -m d2v_mini plan` prints
    cfg = apply_plan(cfg, p)                                   # cfg.optim.batch_size / accum_steps / max_tokens

Two kinds of update (cfg.optim):
  * by items (images, text blocks, speech clips of small / tiny): one update = batch_size items =
    gpus x accum_steps x micro_batch. The micro-batch is the largest that `scaling.max_micro_batch`
    fits in the GPU's memory and that divides the per-GPU share (`scaling.plan_batch`).
  * by samples (speech base / large, max_tokens > 0, d2v_mini/batching.py): one update = batch_size
    batches of <= max_tokens samples (fairseq: 16 GPUs x 1 batch of 3.8M samples). With G GPUs,
    accum_steps = 16 / G. If a batch of max_tokens samples (worst case: max_tokens / crop crops of
    cfg.crop samples) does not fit, each batch is split in k: max_tokens / k samples, k x batch_size
    batches, the same samples per update.
Memory is `scaling.memory_estimate` (a lower bound: see its docstring), with `reserve_gib` kept for the
CUDA context and allocator slack.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .config import Data2VecConfig, override
from .scaling import GIB, format_bytes, max_micro_batch, memory_estimate, plan_batch

VALUE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass
class Plan:
    modality: str
    preset: str
    gpus: int
    gpu_gib: float
    precision: str
    global_batch: int  # items per update; with max_tokens > 0: batches per update (world x accum_steps)
    accum_steps: int  # micro-batches per GPU and update
    micro_batch: int  # items per GPU and forward (max_tokens > 0: crops of cfg.crop a batch may hold, worst case)
    max_tokens: int  # samples per micro-batch (0 = batching by item count)
    memory_bytes: float  # estimated peak of one GPU: model states + one micro-batch's activations
    fits: bool  # memory_bytes <= (gpu_gib - reserve_gib) GiB
    update: str  # what one update holds, in words

    def flags(self) -> str:
        """The `pretrain` options that apply the plan."""
        tokens = f" --max-tokens {self.max_tokens}" if self.max_tokens else ""
        return f"--batch-size {self.global_batch} --accum-steps {self.accum_steps}{tokens} --precision {self.precision}"

    def command(self) -> str:
        """A command line for the plan: python -m on one GPU, torchrun on several (8 per node)."""
        run = f"-m d2v_mini pretrain --modality {self.modality} --preset {self.preset} {self.flags()}"
        if self.gpus == 1:
            return f"python {run}"
        if self.gpus <= 8:
            return f"torchrun --standalone --nproc_per_node={self.gpus} {run}"
        nodes = math.ceil(self.gpus / 8)
        return (f"torchrun --nnodes={nodes} --nproc_per_node={self.gpus // nodes} --rdzv_backend=c10d "
                f"--rdzv_endpoint=HOST:29500 {run}")

    def as_dict(self) -> dict:
        return dict(asdict(self), flags=self.flags(), command=self.command())


def plan_run(cfg: Data2VecConfig, gpus: int = 1, gpu_gib: float = 80.0, precision: str = "bf16",
             reserve_gib: float = 2.0) -> Plan:
    """The plan that reproduces cfg's update on `gpus` GPUs of `gpu_gib` GiB (see the module docstring).
    Raises ValueError when no split fits (not even one sample) or the GPUs cannot share the update."""
    if gpus < 1 or gpu_gib <= reserve_gib:
        raise ValueError(f"need gpus >= 1 and gpu_gib > reserve_gib = {reserve_gib}, got {gpus} and {gpu_gib}")
    if precision not in VALUE_BYTES:
        raise ValueError(f"precision must be one of {list(VALUE_BYTES)}, got {precision!r}")
    vb, o = VALUE_BYTES[precision], cfg.optim
    budget = (gpu_gib - reserve_gib) * GIB
    base = dict(modality=cfg.modality, preset=cfg.name, gpus=gpus, gpu_gib=gpu_gib, precision=precision)
    if o.max_tokens > 0:
        crop = cfg.crop or 15 * cfg.encoder.sample_rate
        one, mem = memory_estimate(cfg, 1, value_bytes=vb), None
        for k in range(1, 1025):
            tokens = o.max_tokens // k
            batches = o.batch_size * k
            if batches % gpus:
                continue
            crops = max(1.0, tokens / crop)  # worst case: the batch is all crops of cfg.crop samples
            mem = one["model_states"] + crops * one["activations"]
            if mem <= budget or tokens < crop:
                break
        if mem is None:
            raise ValueError(f"{gpus} GPUs cannot share an update of {o.batch_size} x k batches for any k <= 1024")
        total = batches * tokens
        update = (f"{batches} batches x {tokens / 1e6:.3g}M samples = {total / 1e6:.3g}M samples "
                  f"({total / cfg.encoder.sample_rate / 60:.1f} min of audio)")
        return Plan(**base, global_batch=batches, accum_steps=batches // gpus, micro_batch=int(crops),
                    max_tokens=tokens, memory_bytes=mem, fits=mem <= budget, update=update)
    max_micro = max_micro_batch(cfg, gpu_gib, reserve_gib=reserve_gib, value_bytes=vb)
    if max_micro < 1:
        raise ValueError(f"{cfg.modality}/{cfg.name}: not even the model states fit in {gpu_gib} GiB "
                         f"(estimate {format_bytes(memory_estimate(cfg, 1, value_bytes=vb)['total'])} for one sample)")
    accum, micro = plan_batch(o.batch_size, max_micro, gpus)
    mem = memory_estimate(cfg, micro, value_bytes=vb)["total"]
    unit = {"image": "images", "text": "blocks", "speech": "clips"}[cfg.modality]
    return Plan(**base, global_batch=o.batch_size, accum_steps=accum, micro_batch=micro, max_tokens=0,
                memory_bytes=mem, fits=mem <= budget, update=f"{o.batch_size} {unit}")


def apply_plan(cfg: Data2VecConfig, plan: Plan) -> Data2VecConfig:
    """cfg with the plan's batch_size, accum_steps (and max_tokens for token batching)."""
    kw = {"optim.batch_size": plan.global_batch, "optim.accum_steps": plan.accum_steps}
    if plan.max_tokens:
        kw["optim.max_tokens"] = plan.max_tokens
    return override(cfg, **kw)


def fit_to_gpu(cfg: Data2VecConfig, gpu_gib: float, gpus: int = 1, precision: str = "bf16") -> Data2VecConfig:
    """cfg with the accumulation (and token budget) that fits its update on `gpus` GPUs of `gpu_gib` GiB."""
    return apply_plan(cfg, plan_run(cfg, gpus, gpu_gib, precision))


def format_plan(p: Plan) -> str:
    """What `python -m d2v_mini plan` prints."""
    per = (f"{p.accum_steps} micro-batches of <= {p.max_tokens:,} samples (<= {p.micro_batch} crops)"
           if p.max_tokens else f"{p.accum_steps} micro-batches of {p.micro_batch}")
    return "\n".join([
        f"{p.modality}/{p.preset} on {p.gpus} GPU(s) of {p.gpu_gib:g} GiB, {p.precision}",
        f"  one update:     {p.update}",
        f"  per GPU:        {per} (accum_steps {p.accum_steps})",
        f"  memory / GPU:   {format_bytes(p.memory_bytes)} estimated "
        + ("(fits)" if p.fits else "(does NOT fit: use activation checkpointing or more GPUs)"),
        f"  command:        {p.command()}",
    ])
