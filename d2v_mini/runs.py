"""Run folders: what `pretrain` writes (checkpoint.pt, metrics.jsonl, config.json, pipeline.json),
and the rules that keep a run from being lost:

- a folder that holds a run is only touched with `resume` (continue it) or `overwrite` (replace it);
  `check_run_dir` says so before anything is written, and the trainer calls it only after the
  arguments, the config and the data were checked;
- every file is written inside the folder, never through a symbolic link that points elsewhere
  (`run_file` refuses one), and replaced atomically (temporary file + rename);
- `read_metrics` tolerates a blank or half-written last line (a run killed while logging).
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

from .errors import RunFolderError

RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "config.json", "pipeline.json")


def holds_run(out: Path) -> bool:
    """True if `out` has a checkpoint or metrics of an earlier run."""
    return any((Path(out) / f).exists() for f in ("checkpoint.pt", "metrics.jsonl"))


def check_run_dir(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Raise RunFolderError if `out` holds a run and neither `resume` nor `overwrite` is set, or if
    one of its run files is a symbolic link or not a regular file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"the run folder {out} is a file: pass another --out folder")
    for name in RUN_FILES:
        run_file(out, name)
    if holds_run(out) and not (resume or overwrite):
        raise RunFolderError(f"{out} holds a run already (checkpoint.pt / metrics.jsonl): pass --resume to "
                             f"continue it, --overwrite to replace it, or another --out folder")


def run_file(out: str | Path, name: str) -> Path:
    """`out / name`, refusing a symbolic link (writing through it would change a file outside the run)
    or anything that is not a regular file."""
    path = Path(out) / name
    if path.is_symlink():
        raise RunFolderError(f"{path} is a symbolic link (to {os.readlink(path)}): a run writes its own files; "
                             f"remove the link or use another --out folder")
    if path.exists() and not path.is_file():
        raise RunFolderError(f"{path} is not a regular file: remove it or use another --out folder")
    return path


def write_text(out: str | Path, name: str, text: str) -> Path:
    """Write `out / name` atomically (a temporary file in `out`, then rename): never half written,
    and a symbolic link is refused (see `run_file`)."""
    path = run_file(out, name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def append_line(path: Path, line: str) -> None:
    """Append one line to a run file without following a symbolic link (O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise RunFolderError(f"cannot append to {path} ({e.strerror}): is it a symbolic link?") from e
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


def read_metrics(path: Path, upto: int | None = None) -> list[dict]:
    """The metrics lines of a run (dicts with "step"), optionally only those with step <= `upto`.
    Blank lines are skipped; a line that is not JSON (a run killed mid-write) is dropped with a warning."""
    if not path.exists():
        return []
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = row["step"]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if upto is None or step <= upto:
            rows.append(row)
    if bad:
        warnings.warn(f"{path}: dropped {bad} unreadable line(s) (a run killed while logging?)", stacklevel=2)
    return rows
