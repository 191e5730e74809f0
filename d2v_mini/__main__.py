"""Command line.

    python -m d2v_mini presets [--json]                        # the named presets and their sizes
    python -m d2v_mini pretrain --modality speech --preset tiny [--steps N] [--out DIR] [--resume] ...
    torchrun --nproc_per_node=K -m d2v_mini pretrain ...       # the same, data-parallel
    python -m d2v_mini probe --checkpoint DIR/checkpoint.pt [--task NAME] [--layer last|mean|INT]
    python -m d2v_mini demo [--out runs/demo] [--steps-scale F]  # tiny pretraining + probes, all modalities
    python -m d2v_mini demo --version 2                          # the same with data2vec 2.0 (runs/demo_v2)

Data sets are read from $D2V_DATA (default ./data) and downloaded there when missing: from $D2V_MIRROR_URL
if set, else from their original hosts; `--no-download` (or D2V_DOWNLOAD=never) forbids it. A data set that
is missing and cannot be had ends the command with a one-line message (exit status 1), not a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def cmd_presets(args: argparse.Namespace) -> None:
    from .presets import format_table, preset_rows

    rows = preset_rows()
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .config import override
    from .pipeline import default_dataset, pretrain_data, run_info
    from .presets import preset
    from .train import TrainOptions, pretrain

    cfg = preset(args.modality, args.preset)
    if args.batch_size:
        cfg = override(cfg, **{"optim.batch_size": args.batch_size})
    if args.accum_steps:
        cfg = override(cfg, **{"optim.accum_steps": args.accum_steps})
    if args.max_tokens is not None:
        cfg = override(cfg, **{"optim.max_tokens": args.max_tokens})
    dataset_name = args.dataset or default_dataset(args.modality)
    dataset, collate_fn = pretrain_data(cfg, dataset_name, limit=args.limit)
    out = Path(args.out or f"runs/{args.modality}-{args.preset}")
    opts = TrainOptions(steps=args.steps, out_dir=str(out), device=args.device, precision=args.precision,
                        resume=args.resume, log_every=args.log_every, ckpt_every=args.ckpt_every,
                        compile=args.compile, seed=args.seed, num_workers=args.num_workers,
                        progress=not args.no_progress)
    is_main = int(os.environ.get("RANK", "0")) == 0
    res = pretrain(cfg, dataset, collate_fn, opts)
    if is_main:  # what `probe` needs to rebuild the data pipeline (the tiny text tokenizer is trained on it)
        (out / "pipeline.json").write_text(json.dumps(dict(run_info(cfg, dataset_name), limit=args.limit), indent=1))
        last = res.history[-1] if res.history else {}
        print(f"{args.modality}/{args.preset} on {dataset_name}: step {last.get('step')}, loss "
              f"{last.get('loss', float('nan')):.4f}, target_var {last.get('target_var', float('nan')):.3f}, "
              f"{res.seconds:.0f} s -> {out / 'checkpoint.pt'}")


def _layer(value: str) -> int | str:
    if value in ("last", "mean"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer must be 'last', 'mean' or an integer, got {value!r}") from None


def cmd_probe(args: argparse.Namespace) -> None:
    from .evaluate import as_encoder, probe, random_init_encoder
    from .pipeline import probe_data
    from .train import load_checkpoint

    ckpt = Path(args.checkpoint)
    if ckpt.is_dir():
        ckpt = ckpt / "checkpoint.pt"
    if not ckpt.exists():
        raise SystemExit(f"no checkpoint at {ckpt}: pass the checkpoint.pt that `pretrain` wrote (or its folder)")
    model = load_checkpoint(ckpt)
    meta_path = ckpt.parent / "pipeline.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    cfg = model.cfg
    if cfg.modality == "text":  # the probe must tokenize with the tokenizer the encoder was pretrained with
        from .pipeline import tokenizer_for
        tok = tokenizer_for(cfg, meta.get("dataset"))
        if not meta:
            print(f"warning: no {meta_path}; assuming the tokenizer {tok!r}", file=sys.stderr)
        elif meta.get("tokenizer", tok.fingerprint) != tok.fingerprint:
            raise SystemExit(f"the tokenizer rebuilt for {meta.get('dataset')} ({tok.fingerprint}) is not the one "
                             f"the checkpoint was pretrained with ({meta['tokenizer']})")
    task = probe_data(cfg, args.task, dataset=meta.get("dataset"), limit_train=args.limit_train,
                      limit_test=args.limit_test)
    kw = dict(layer=args.layer, batch_size=args.batch_size, device=args.device)
    results = {"pretrained": probe(as_encoder(model, "teacher" if args.teacher else "student"), task, **kw)}
    if not args.no_baseline:
        results["random_init"] = probe(random_init_encoder(cfg, args.seed), task, **kw)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    r = results["pretrained"]
    print(f"{task.name} ({r['num_train']} train / {r['num_test']} test, layer {args.layer}, "
          f"{cfg.modality}/{cfg.name} encoder, {'teacher' if args.teacher else 'student'})")
    for name, r in results.items():
        print(f"  {name:<12} accuracy {r['accuracy']:.4f}   (train {r['train_accuracy']:.4f}, "
              f"L2 {r['weight_decay']:g})")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(out_dir=args.out, steps_scale=args.steps_scale, modalities=args.modalities, seed=args.seed,
             threads=args.threads, random_inits=args.random_inits, version=args.version)


def _download_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-download", action="store_true",
                   help="never download a missing data set (the same as D2V_DOWNLOAD=never)")


def _preset_names() -> list[str]:
    """Every preset name of any modality, in table order (`python -m d2v_mini presets`)."""
    from .presets import PRESETS

    return list(dict.fromkeys(name for table in PRESETS.values() for name in table))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m d2v_mini", description="data2vec, small and readable")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("presets", help="print the named presets (layers, width, parameters, masking, K, tau)")
    s.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("pretrain", help="pretrain a preset on its modality's default data set")
    s.add_argument("--modality", required=True, choices=["speech", "image", "text"])
    s.add_argument("--preset", default="tiny", choices=_preset_names(),
                   help="a preset of the modality (1.0: tiny, small, base, ...; 2.0: tiny_v2, ..., large_v2)")
    s.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's total_steps)")
    s.add_argument("--out", default=None, help="output folder (default runs/<modality>-<preset>)")
    s.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    s.add_argument("--dataset", default=None, help="pretraining data set (see d2v_mini/pipeline.py)")
    s.add_argument("--limit", type=int, default=None, help="use only the first N examples / blocks")
    s.add_argument("--batch-size", type=int, default=None, help="override cfg.optim.batch_size (global batch; "
                   "with max_tokens > 0: batches per update)")
    s.add_argument("--accum-steps", type=int, default=None, help="override cfg.optim.accum_steps (micro-batches "
                   "per GPU and update; speech base on G GPUs: 16 / G)")
    s.add_argument("--max-tokens", type=int, default=None, help="override cfg.optim.max_tokens (speech: samples "
                   "per micro-batch; 0 = batch by clip count)")
    s.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--compile", action="store_true", help="torch.compile the forward")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-workers", type=int, default=0)
    s.add_argument("--log-every", type=int, default=10)
    s.add_argument("--ckpt-every", type=int, default=0, help="0 = only at the end")
    s.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    _download_flag(s)
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("probe", help="linear probe of a checkpoint's encoder vs a random-init encoder")
    s.add_argument("--checkpoint", required=True, help="checkpoint.pt written by pretrain (or its folder)")
    s.add_argument("--task", default=None, help="probe task (default: the modality's, see pipeline.py)")
    s.add_argument("--layer", type=_layer, default="last", help="last | mean | index into hidden_states")
    s.add_argument("--limit-train", type=int, default=None)
    s.add_argument("--limit-test", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="cpu")
    s.add_argument("--teacher", action="store_true", help="probe the EMA teacher instead of the student")
    s.add_argument("--no-baseline", action="store_true", help="skip the random-init encoder")
    s.add_argument("--seed", type=int, default=0, help="seed of the random-init encoder")
    s.add_argument("--json", action="store_true")
    _download_flag(s)
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("demo", help="tiny pretraining of each modality, probed against random init")
    s.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/demo_v2 with --version 2)")
    s.add_argument("--version", type=int, default=1, choices=[1, 2], help="1: data2vec, 2: data2vec 2.0 (tiny_v2)")
    s.add_argument("--steps-scale", type=float, default=1.0, help="multiply every modality's steps by F")
    s.add_argument("--modalities", nargs="+", default=["speech", "image", "text"],
                   choices=["speech", "image", "text"])
    s.add_argument("--seed", type=int, default=0, help="pretraining seed (the random-init baseline uses seed + 1)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1, or $OMP_NUM_THREADS)")
    s.add_argument("--random-inits", type=int, default=3, help="random-init encoders averaged for the baseline")
    _download_flag(s)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "no_download", False):
        os.environ["D2V_DOWNLOAD"] = "never"
    try:
        args.func(args)
    except FileNotFoundError as e:  # a missing data set: its one-line message, no traceback
        from .data import DatasetNotFoundError
        if not isinstance(e, DatasetNotFoundError):
            raise
        raise SystemExit(f"d2v_mini: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
