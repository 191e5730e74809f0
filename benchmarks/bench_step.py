"""(b) Where one data2vec pretraining step spends its time: mask, student, teacher, targets, loss +
backward, optimizer, EMA.

The step is the one d2v_mini.train runs (one micro-batch, one process), cut into phases:
  mask           draw the recipe's mask (CPU generator, moved to the device)
  student        embed + forward_features on the masked input + regression head at masked positions
  teacher        EMA teacher forward on the unmasked input (no gradient)
  targets        top-K layers -> per-layer norm -> average (fp32) -> select the masked positions
  loss+backward  regression loss, backward of loss * num_masked (GradScaler for fp16)
  optimizer      unscale, gradient / num_masked, clip, AdamW step, zero_grad, LR step
  ema            teacher <- tau * teacher + (1 - tau) * student (fp32)
The phases mirror `Data2Vec.forward` line by line (`split_forward` below; tests/test_benchmarks.py
checks that it gives the same loss). Each phase synchronises the device at both ends, so their sum is
a little above an unsplit step, which is timed too ("unsplit" column). Medians over --repeats steps.

    python benchmarks/bench_step.py                          # tiny presets, batch = preset's micro-batch
    python benchmarks/bench_step.py --presets base --batch 2 --seconds 2 --tokens 128 --repeats 3
    python benchmarks/bench_step.py --presets base --device cuda --precision bf16
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

import common
from d2v_mini.config import Data2VecConfig
from d2v_mini.data2vec import Data2Vec
from d2v_mini.loss import regression_loss
from d2v_mini.masking import check_mask
from d2v_mini.targets import build_targets, target_layers

PHASES = ("mask", "student", "teacher", "targets", "loss+backward", "optimizer", "ema")


def split_forward(model: Data2Vec, source: Tensor, generator: torch.Generator | None = None,
                  timer: common.PhaseTimer | None = None, precision: str = "fp32") -> tuple[Tensor, int]:
    """`Data2Vec.forward(source, generator=generator)` cut into timed phases (no padding).

    source: speech [B, N] / images [B, C, H, W] / tokens [B, T]. Returns (loss, number of masked positions)."""
    phase = timer if timer is not None else (lambda name: nullcontext())
    cfg, student = model.cfg, model.student
    amp = common.autocast(source.device, precision)
    with phase("mask"):
        drawn = model.make_mask(source, None, generator)
        if cfg.modality == "text":
            student_input = drawn.tokens
            mask = drawn.mask if cfg.masking.loss_on_all_selected else drawn.replaced
        else:
            student_input, mask = source, drawn
    with phase("student"), amp:
        features, frame_pm = student.embed(student_input, None)
        mask = check_mask(mask, tuple(features.shape[:2]))
        out = student.forward_features(features, None if cfg.modality == "text" else mask, frame_pm)
        x = out.last_hidden_state[:, 1:] if student.has_cls else out.last_hidden_state
        pred = model.head(x[mask])  # [N, D]
    with phase("teacher"), amp, torch.no_grad():
        if cfg.ema.teacher_input == "student_features" and cfg.modality != "text":
            t_out = model.teacher.model.forward_features(features.detach(), None, frame_pm)
        else:
            t_out = model.teacher.model(source, None, None)
    with phase("targets"), amp, torch.no_grad():
        layers = target_layers(t_out, cfg.targets)
        if student.has_cls:
            layers = [t[:, 1:] for t in layers]
        y = build_targets(layers, cfg.targets, frame_pm)[mask]  # [N, D], fp32
    with phase("loss+backward"), amp:  # the loss is computed in fp32 whatever the autocast dtype
        loss = regression_loss(pred, y, cfg.loss)
    return loss, int(y.shape[0])


def bench_one(cfg: Data2VecConfig, batch: int, device: torch.device, args) -> dict:
    model, opt, sched, scaler, source, g = common.training_setup(cfg, batch, device, args)
    timer = common.PhaseTimer(device)
    for _ in range(args.warmup + args.repeats):
        timer.new_step()
        loss, n = split_forward(model, source, g, timer, args.precision)
        with timer("loss+backward"):
            scaler.scale(loss * n).backward()
        with timer("optimizer"):
            common.optimizer_step(model, opt, sched, scaler, n)
        with timer("ema"):
            model.ema_step()
    ms = timer.medians(skip=args.warmup)
    total = sum(ms.values())
    unsplit = common.time_ms(lambda: common.train_step(model, source, opt, sched, scaler, args.precision, g),
                             device, warmup=1, repeats=args.repeats)
    row = {"modality": cfg.modality, "preset": cfg.name, "batch": batch,
           "input": "x".join(str(s) for s in source.shape[1:])}
    row.update({f"{k}_ms": ms[k] for k in PHASES})
    row.update({f"{k}_pct": 100 * ms[k] / total for k in PHASES})
    row.update({"sum_ms": total, "unsplit_ms": common.median(unsplit), "peak_mem_MiB": common.peak_memory_mib(device)})
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", default="0", help="comma-separated batch sizes (0 = the preset's micro-batch, "
                                                "cfg.optim.batch_size / accum_steps, capped at 16)")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.batch, args.warmup, args.repeats = "tiny", "2", 1, 2
    device = common.setup(args)
    h = common.header("one data2vec pretraining step, split into phases", args, device,
                      {"note": "each phase syncs the device at both ends; pct = share of the summed phases"})
    common.print_header(h)
    rows = common.run_grid(args, device, bench_one, lambda r: f"{r['sum_ms']:.1f} ms")
    key = ["modality", "preset", "batch", "input"]
    print("\nmilliseconds per phase (median over steps)")
    print(common.format_table(rows, key + [f"{k}_ms" for k in PHASES] + ["sum_ms", "unsplit_ms", "peak_mem_MiB"]))
    print("\nshare of the step (% of the summed phases)")
    print(common.format_table(rows, key + [f"{k}_pct" for k in PHASES]))
    common.write_json(args.json, h, rows)
    return rows


if __name__ == "__main__":
    main()
