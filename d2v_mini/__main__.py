"""Command line.

    python -m d2v_mini presets [--json]                        # the named presets and their sizes
    python -m d2v_mini pretrain --modality speech --preset tiny [--steps N] [--out DIR] [--resume] ...
    torchrun --nproc_per_node=K -m d2v_mini pretrain ...       # the same, data-parallel
    python -m d2v_mini probe --checkpoint DIR/checkpoint.pt [--task NAME] [--layer last|mean|INT]
    python -m d2v_mini demo [--out runs/demo] [--steps-scale F]  # tiny pretraining + probes, all modalities
    python -m d2v_mini demo --version 2                          # the same with data2vec 2.0 (runs/demo_v2)
    python -m d2v_mini plan --modality image --preset base --gpus 8 --gpu-gib 80   # micro-batch x accumulation

`--dataset` takes a named data set (d2v_mini/pipeline.py) or the paper's data (d2v_mini/data/local.py): an
ImageNet-style folder, a fairseq manifest (.tsv) or LibriSpeech folders, .txt files or hf:<name>[:<config>].

Data sets are read from $D2V_DATA (default ./data) and downloaded there when missing: from $D2V_MIRROR_URL
if set, else from their original hosts; `--no-download` (or D2V_DOWNLOAD=never) forbids it. A data set that
is missing and cannot be had ends the command with a one-line message "d2v_mini: ..." (exit status 1).
A folder that holds a run is only continued (--resume) or replaced (--overwrite), and only after the
arguments and the data were checked. Any other anticipated error (bad argument, config, data file,
checkpoint or run folder, a diverged run) is printed as one line "error: ..." and exits with status 1;
`--debug` shows the traceback instead.
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
    from .runs import check_run_dir, write_text
    from .train import TrainOptions, pretrain

    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: pass one of them")
    cfg = preset(args.modality, args.preset)
    if args.batch_size:
        cfg = override(cfg, **{"optim.batch_size": args.batch_size})
    if args.accum_steps:
        cfg = override(cfg, **{"optim.accum_steps": args.accum_steps})
    if args.max_tokens is not None:
        cfg = override(cfg, **{"optim.max_tokens": args.max_tokens})
    out = Path(args.out or f"runs/{args.modality}-{args.preset}")
    check_run_dir(out, args.resume, args.overwrite)  # before the (slow) data: nothing is written yet
    dataset_name = args.dataset or default_dataset(args.modality, args.preset)
    dataset, collate_fn = pretrain_data(cfg, dataset_name, limit=args.limit)
    if args.skip_bad_files:
        from .data.skip import SkipBadItems
        dataset = SkipBadItems(dataset)
    # what `probe` and `--resume` need to rebuild the data pipeline, in every checkpoint (text: the tokenizer)
    info = dict(run_info(cfg, dataset_name, with_tokenizer=True), limit=args.limit)
    opts = TrainOptions(steps=args.steps, out_dir=str(out), device=args.device, precision=args.precision,
                        resume=args.resume, overwrite=args.overwrite, log_every=args.log_every,
                        ckpt_every=args.ckpt_every, compile=args.compile, seed=args.seed,
                        num_workers=args.num_workers, progress=not args.no_progress, pipeline=info)
    is_main = int(os.environ.get("RANK", "0")) == 0
    res = pretrain(cfg, dataset, collate_fn, opts)
    if not res.history:
        raise ValueError(f"nothing to do: {out / 'checkpoint.pt'} is at step {res.start_step} already, and "
                         f"--steps is {args.steps or cfg.optim.total_steps}: pass a larger --steps to continue it")
    skipped = getattr(dataset, "skipped", 0)
    if skipped and is_main:
        print(f"skipped {skipped} unreadable item(s) (--skip-bad-files); the first: "
              f"{next(iter(dataset.bad.values()))}", file=sys.stderr)
    if is_main:
        write_text(out, "pipeline.json", json.dumps({k: v for k, v in info.items() if k != "tokenizer_json"},
                                                    indent=1))
        last = res.history[-1]
        print(f"{args.modality}/{args.preset} on {dataset_name}: step {last.get('step')}, loss "
              f"{last.get('loss', float('nan')):.4f}, target_var {last.get('target_var', float('nan')):.3f}, "
              f"{res.seconds:.0f} s -> {out / 'checkpoint.pt'}")


def cmd_plan(args: argparse.Namespace) -> None:
    from .planner import format_plan, plan_run
    from .presets import preset

    p = plan_run(preset(args.modality, args.preset), gpus=args.gpus, gpu_gib=args.gpu_gib, precision=args.precision)
    print(json.dumps(p.as_dict(), indent=1) if args.json else format_plan(p))


def _layer(value: str) -> int | str:
    if value in ("last", "mean"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer must be 'last', 'mean' or an integer, got {value!r}") from None


def cmd_probe(args: argparse.Namespace) -> None:
    from .checkpoint import read_checkpoint
    from .evaluate import as_encoder, probe, random_init_encoder
    from .pipeline import probe_data, run_tokenizer
    from .train import load_checkpoint

    ckpt = Path(args.checkpoint)
    ckpt = ckpt / "checkpoint.pt" if ckpt.is_dir() else ckpt
    ck = read_checkpoint(ckpt)
    model = load_checkpoint(ckpt, ck=ck)
    cfg, meta = model.cfg, _pipeline_info(ck, ckpt)
    tok = run_tokenizer(cfg, meta) if cfg.modality == "text" else None  # the one it was pretrained with
    task = probe_data(cfg, args.task, dataset=meta.get("dataset"), limit_train=args.limit_train,
                      limit_test=args.limit_test, tokenizer=tok)
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


def _pipeline_info(ck: dict, ckpt: Path) -> dict:
    """The run's pipeline: from the checkpoint (written with it), checked against pipeline.json; a
    checkpoint from before the pipeline was stored in it falls back to pipeline.json."""
    from .errors import CheckpointError

    meta_path = ckpt.parent / "pipeline.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}): remove it (the checkpoint holds the same)")
    info = ck.get("pipeline") or {}
    if not info:
        if not meta and ck["cfg"]["modality"] == "text":
            print(f"warning: neither {ckpt} nor {meta_path} names the tokenizer; assuming the default corpus's",
                  file=sys.stderr)
        return meta
    bad = [k for k in ("modality", "dataset", "tokenizer") if k in meta and meta[k] != info.get(k)]
    if bad:
        what = ", ".join(f"{k} {meta[k]!r} vs {info.get(k)!r}" for k in bad)
        raise CheckpointError(f"{meta_path} does not belong to {ckpt} ({what}): "
                              f"remove it or put the checkpoint in its own run folder")
    return info


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(out_dir=args.out, steps_scale=args.steps_scale, modalities=args.modalities, seed=args.seed,
             threads=args.threads, random_inits=args.random_inits, version=args.version)


def _number(kind, low, inclusive: bool = True):
    """An argparse type: a `kind` (int / float) >= low (or > low)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value < low or (value == low and not inclusive) or value != value or value in (float("inf"),):
            raise argparse.ArgumentTypeError(f"expected a {'' if kind is int else 'finite '}number "
                                             f"{'>=' if inclusive else '>'} {low}, got {text}")
        return value
    parse.__name__ = f"{kind.__name__} {'>=' if inclusive else '>'} {low}"
    return parse


positive_int, nonneg_int, positive_float = _number(int, 1), _number(int, 0), _number(float, 0.0, inclusive=False)


def _device(text: str) -> str:
    import re
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if text.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text} requested but CUDA is not available: use --device cpu or auto")
    return text


def _download_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-download", action="store_true",
                   help="never download a missing data set (the same as D2V_DOWNLOAD=never)")


def _preset_names() -> list[str]:
    """Every preset name of any modality, in table order (`python -m d2v_mini presets`)."""
    from .presets import PRESETS

    return list(dict.fromkeys(name for table in PRESETS.values() for name in table))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m d2v_mini", description="data2vec, small and readable")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = p.add_subparsers(dest="command", required=True)
    debug = argparse.ArgumentParser(add_help=False)  # --debug after the command too
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    s = sub.add_parser("presets", parents=[debug],
                       help="print the named presets (layers, width, parameters, masking, K, tau)")
    s.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("pretrain", parents=[debug], help="pretrain a preset on its modality's default data set")
    s.add_argument("--modality", required=True, choices=["speech", "image", "text"])
    s.add_argument("--preset", default="tiny", choices=_preset_names(),
                   help="a preset of the modality (1.0: tiny, small, base, ...; 2.0: tiny_v2, ..., large_v2)")
    s.add_argument("--steps", type=positive_int, default=None,
                   help="optimizer steps (default: the preset's total_steps)")
    s.add_argument("--out", default=None, help="output folder (default runs/<modality>-<preset>)")
    s.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    s.add_argument("--overwrite", action="store_true", help="replace the run in <out> (default: refuse)")
    s.add_argument("--dataset", default=None, help="a named pretraining data set (d2v_mini/pipeline.py), an "
                   "ImageNet-style folder, a fairseq .tsv manifest, audio folders (comma-separated), .txt files "
                   "or hf:<name>[:<config>] (d2v_mini/data/local.py)")
    s.add_argument("--limit", type=positive_int, default=None, help="use only the first N examples / blocks")
    s.add_argument("--batch-size", type=positive_int, default=None, help="override cfg.optim.batch_size "
                   "(global batch; with max_tokens > 0: batches per update)")
    s.add_argument("--accum-steps", type=positive_int, default=None, help="override cfg.optim.accum_steps "
                   "(micro-batches per GPU and update; speech base on G GPUs: 16 / G)")
    s.add_argument("--max-tokens", type=nonneg_int, default=None, help="override cfg.optim.max_tokens (speech: "
                   "samples per micro-batch; 0 = batch by clip count)")
    s.add_argument("--skip-bad-files", action="store_true",
                   help="replace unreadable data files by the next readable item (counted) instead of stopping")
    s.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast dtype; auto: bf16 on GPUs that have it, fp16 (+ loss scaling) on older ones, fp32 "
                   "on the CPU")
    s.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--compile", dest="compile", action="store_const", const=True, default="auto",
                   help="torch.compile every Transformer block (default: on a GPU for runs of >= 1000 steps)")
    s.add_argument("--no-compile", dest="compile", action="store_const", const=False, help="never torch.compile")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-workers", type=nonneg_int, default=None, help="DataLoader workers (default: 0 on the CPU, "
                   "on a GPU min(8, CPU cores per GPU - 1))")
    s.add_argument("--log-every", type=positive_int, default=10)
    s.add_argument("--ckpt-every", type=nonneg_int, default=0, help="0 = only at the end")
    s.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    _download_flag(s)
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("plan", parents=[debug], help="micro-batch and accumulation that give a preset's update on G GPUs")
    s.add_argument("--modality", required=True, choices=["speech", "image", "text"])
    s.add_argument("--preset", default="base", choices=_preset_names())
    s.add_argument("--gpus", type=positive_int, default=1, help="number of GPUs (all nodes)")
    s.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU in GiB")
    s.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("probe", parents=[debug], help="linear probe of a checkpoint's encoder vs a random-init encoder")
    s.add_argument("--checkpoint", required=True, help="checkpoint.pt written by pretrain (or its folder)")
    s.add_argument("--task", default=None, help="probe task (default: the modality's, see pipeline.py)")
    s.add_argument("--layer", type=_layer, default="last", help="last | mean | index into hidden_states")
    s.add_argument("--limit-train", type=positive_int, default=None)
    s.add_argument("--limit-test", type=positive_int, default=None)
    s.add_argument("--batch-size", type=positive_int, default=64)
    s.add_argument("--device", type=_device, default="cpu")
    s.add_argument("--teacher", action="store_true", help="probe the EMA teacher instead of the student")
    s.add_argument("--no-baseline", action="store_true", help="skip the random-init encoder")
    s.add_argument("--seed", type=int, default=0, help="seed of the random-init encoder")
    s.add_argument("--json", action="store_true")
    _download_flag(s)
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("demo", parents=[debug], help="tiny pretraining of each modality, probed against random init")
    s.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/demo_v2 with --version 2)")
    s.add_argument("--version", type=int, default=1, choices=[1, 2], help="1: data2vec, 2: data2vec 2.0 (tiny_v2)")
    s.add_argument("--steps-scale", type=positive_float, default=1.0, help="multiply every modality's steps by F")
    s.add_argument("--modalities", nargs="+", default=["speech", "image", "text"],
                   choices=["speech", "image", "text"])
    s.add_argument("--seed", type=int, default=0, help="pretraining seed (the random-init baseline uses seed + 1)")
    s.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default 1, or $OMP_NUM_THREADS)")
    s.add_argument("--random-inits", type=positive_int, default=3,
                   help="random-init encoders averaged for the baseline")
    _download_flag(s)
    s.set_defaults(func=cmd_demo)
    return p


def _anticipated() -> tuple[type[BaseException], ...]:
    from .train import CollapseError, NonFiniteLossError

    # ValueError covers ConfigError, InputError, CheckpointError, RunFolderError, DataFileError (errors.py);
    # OSError covers a missing data set (DatasetNotFoundError) and unwritable folders
    return ValueError, OSError, NonFiniteLossError, CollapseError


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "no_download", False):
        os.environ["D2V_DOWNLOAD"] = "never"
    try:
        args.func(args)
    except _anticipated() as e:
        if args.debug:
            raise
        from .data import DatasetNotFoundError

        # a missing data set (DownloadError included) keeps its own prefix: it names the data set and the fix
        prefix = "d2v_mini" if isinstance(e, DatasetNotFoundError) else "error"
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        raise SystemExit(f"{prefix}: {text}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
