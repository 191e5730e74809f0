"""Reading `pretrain` checkpoints safely, and checking that one fits the run that wants it.

    ck = read_checkpoint("runs/speech/checkpoint.pt")   # dict: cfg, model, optimizer, ..., pipeline
    check_fits(ck, cfg, path)                          # resume: the same modality and architecture

Loading is always `torch.load(weights_only=True)`; a file that is not a checkpoint (truncated by a
killed copy, another format, a JSON file passed by mistake) raises CheckpointError saying which,
never advising an unsafe `weights_only=False`.

A checkpoint also carries `pipeline`: what `probe` and `--resume` need to rebuild the data pipeline
(modality, preset, data set, limit; for text the tokenizer itself, `tokenizer_json`, and its
fingerprint), written with the first checkpoint, so a killed run is probed with its own tokenizer.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from .config import Data2VecConfig
from .errors import CheckpointError

# the sections that fix the parameters' shapes and meaning; optim / guard / masking may change on resume
# (version / v2: data2vec 2.0's encoder kind and decoder; its masks live in v2 too and may not change on resume)
ARCHITECTURE = ("modality", "version", "encoder", "targets", "ema", "loss", "v2")


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The dict a `pretrain` checkpoint holds (weights_only load). Raises CheckpointError with the
    reason when `path` is missing, truncated, not a torch checkpoint, or not a d2v_mini one."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass the checkpoint.pt that `pretrain` wrote (or its folder)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        what = "a JSON/text file" if head[:1] in (b"{", b"[") else "not a torch checkpoint"
        raise CheckpointError(f"{path} is {what} ({size} bytes, starts with {head!r}): pass the checkpoint.pt "
                              f"written by `python -m d2v_mini pretrain`")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or corrupted ({size} bytes; its zip directory is missing): "
                              f"the write or copy was interrupted. Use an intact copy, or rerun `pretrain` "
                              f"(with --resume from an earlier checkpoint if there is one)")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the reason is reported, without torch's unsafe advice
        reason = str(e).split("\n")[0][:200]
        raise CheckpointError(f"{path} could not be read as a d2v_mini checkpoint ({type(e).__name__}: {reason}). "
                              f"Only files written by `pretrain` are supported; they load with weights_only=True")
    if not isinstance(ck, dict) or not {"cfg", "model"} <= set(ck):
        got = sorted(ck)[:8] if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{path} is a torch file but not a d2v_mini pretrain checkpoint (it holds {got}; "
                              f"expected keys 'cfg', 'model', ...)")
    return ck


def checkpoint_config(ck: dict, path: str | Path = "checkpoint") -> Data2VecConfig:
    """The Data2VecConfig a checkpoint was trained with."""
    try:
        return Data2VecConfig.from_dict(ck["cfg"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config cannot be rebuilt ({e})") from e


def describe(cfg: Data2VecConfig) -> str:
    e = cfg.encoder
    return f"{cfg.modality}/{cfg.name or 'custom'} (depth {e.depth}, dim {e.dim})"


def check_fits(ck: dict, cfg: Data2VecConfig, path: str | Path) -> None:
    """Raise CheckpointError unless the checkpoint was trained with the same architecture as `cfg`
    (modality, version, encoder, targets, EMA, loss, 2.0's v2 section); the optimiser, guard and masking may differ."""
    old = checkpoint_config(ck, path)
    diff = [k for k in ARCHITECTURE if getattr(old, k) != getattr(cfg, k)]
    if diff:
        fields = []
        for k in diff:
            a, b = getattr(old, k), getattr(cfg, k)
            if k in ("modality", "version") or type(a) is not type(b):
                plain = k in ("modality", "version")
                fields.append(f"{k} {a if plain else type(a).__name__} vs {b if plain else type(b).__name__}")
                continue
            fields += [f"{k}.{f} {getattr(a, f)!r} vs {getattr(b, f)!r}" for f in vars(a)
                       if getattr(a, f) != getattr(b, f)][:3]
        raise CheckpointError(f"{path} holds a {describe(old)} run, which does not fit this {describe(cfg)} run "
                              f"({'; '.join(fields)}): resume with the run's own settings, or start a new run "
                              f"in another --out folder (or --overwrite this one)")


def check_pipeline(ck: dict, pipeline: dict | None, path: str | Path) -> None:
    """On resume: the data set and tokenizer of this run must be the checkpoint's."""
    old = ck.get("pipeline") or {}
    if not pipeline or not old:
        return
    for key in ("dataset", "tokenizer"):
        if key in old and key in pipeline and old[key] != pipeline[key]:
            raise CheckpointError(f"{path} was pretrained with {key} {old[key]!r}, this run has {pipeline[key]!r}: "
                                  f"resume with --dataset {old.get('dataset')} (the same corpus), or start a new run "
                                  f"in another --out folder")
