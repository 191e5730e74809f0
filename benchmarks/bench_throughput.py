"""(c) Pretraining throughput: whole data2vec steps per second at the given presets and batch sizes.

A step is the one d2v_mini.train runs for one micro-batch in one process (common.train_step):
forward (student + teacher + targets + loss) under torch.autocast, backward, unscale / clip / AdamW /
LR step, EMA step. Inputs are synthetic and of the preset's shape (speech: the preset's crop or
--seconds of audio; images: image_size; text: the preset's block or --tokens tokens, no padding).
Reported: median ms per step, samples/s, and seconds of audio per second (speech) or tokens per
second (text); on a GPU also the peak memory.

    python benchmarks/bench_throughput.py                          # tiny, batch 8
    python benchmarks/bench_throughput.py --presets tiny,base --batch 2 --seconds 2 --tokens 128 --repeats 3
    python benchmarks/bench_throughput.py --presets base --batch 16,32 --device cuda --precision bf16
"""
from __future__ import annotations

import torch

import common
from d2v_mini.config import Data2VecConfig


def bench_one(cfg: Data2VecConfig, batch: int, device: torch.device, args) -> dict:
    model, opt, sched, scaler, source, g = common.training_setup(cfg, batch, device, args)
    losses = []

    def step():
        losses.append(common.train_step(model, source, opt, sched, scaler, args.precision, g))

    ms = common.median(common.time_ms(step, device, args.warmup, args.repeats))
    final_loss = losses[-1].item()
    if not torch.isfinite(torch.tensor(final_loss)):
        raise RuntimeError(f"{cfg.modality}/{cfg.name}: the loss became {final_loss} during the benchmark")
    u = common.units(cfg, source)
    return {"modality": cfg.modality, "preset": cfg.name, "batch": batch,
            "input": "x".join(str(s) for s in source.shape[1:]), "precision": args.precision,
            "params_M": model.encoder_params() / 1e6, "step_ms": ms, "samples_per_s": 1e3 * u["samples"] / ms,
            "audio_s_per_s": 1e3 * u["audio_s"] / ms if "audio_s" in u else None,
            "tokens_per_s": 1e3 * u["tokens"] / ms if "tokens" in u else None,
            "loss": final_loss, "peak_mem_MiB": common.peak_memory_mib(device)}


COLUMNS = ["modality", "preset", "batch", "input", "precision", "params_M", "step_ms", "samples_per_s",
           "audio_s_per_s", "tokens_per_s", "peak_mem_MiB"]


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", default="8", help="comma-separated batch sizes")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.batch, args.warmup, args.repeats = "tiny", "2", 1, 2
    device = common.setup(args)
    h = common.header("data2vec pretraining throughput (whole steps)", args, device)
    common.print_header(h)
    rows = common.run_grid(args, device, bench_one, lambda r: f"{r['samples_per_s']:.1f} samples/s")
    print()
    print(common.format_table(rows, COLUMNS))
    common.write_json(args.json, h, rows)
    return rows


if __name__ == "__main__":
    main()
