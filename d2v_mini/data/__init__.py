"""Data pipelines for the three modalities, and where the data lives.

Two folders matter:

- the **data root** `data_root()`: env `D2V_DATA`, default `./data`. Its layout is exactly the offline
  mirror's (`fsdd/recordings/`, `fashion_mnist/*.gz`, `text/wikitext-2/valid.txt`, ...), so CI simply
  points `D2V_DATA` at the shared mirror. Loaders only read it, except to download a missing data set
  into it; with every data set present it may be read-only.
- the **cache** `cache_dir()`: env `D2V_CACHE`, default `~/.cache/d2v_mini`. Everything derived
  (gunzipped IDX files, unpacked CIFAR JPEGs, trained tokenizers, token ids) goes there, written
  atomically (temp file or folder, then rename), so a crash never leaves half a cache behind.

A missing data set is downloaded into the data root (`download.py`: on by default, `D2V_DOWNLOAD=never`
turns it off, `D2V_MIRROR_URL` fetches from a mirror of the data root). When it cannot be had, the loader
raises `DatasetNotFoundError` in one line: which data set, the data root, why, and the two ways to get it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not under the data root (and was not downloaded)."""


def data_root(root: str | Path | None = None) -> Path:
    """The data root: `root` if given, else env `D2V_DATA`, else `./data` (relative to the CWD)."""
    return Path(root) if root is not None else Path(os.environ.get("D2V_DATA", "data"))


def cache_dir() -> Path:
    """Where derived files go: env `D2V_CACHE`, else `~/.cache/d2v_mini` (created on demand)."""
    path = Path(os.environ.get("D2V_CACHE", Path.home() / ".cache" / "d2v_mini"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing_message(title: str, path: Path, reason: str, root: Path | None = None) -> str:
    """One line: data set `title` is not at `path` under the data root, `reason`, and the two ways to get it."""
    env = os.environ.get("D2V_DATA")
    root = Path(root) if root is not None else data_root()
    where = f"D2V_DATA={env}" if env else "D2V_DATA is unset, so ./data"
    return (f"{title} is not in the data root {root.resolve()} ({where}; looked for {Path(path).resolve()}) and "
            f"{reason}. Two ways to get it: let d2v_mini download it (on by default, off with D2V_DOWNLOAD=never or "
            f"--no-download; needs internet, or D2V_MIRROR_URL=<url> of a mirror of the data root), or set D2V_DATA "
            f"to a folder that already holds it in the layout of data/README.md (e.g. an offline data mirror).")


def require(path: Path, name: str, how: str = "") -> Path:
    """Return `path` if it exists, else raise `DatasetNotFoundError` naming `name`, `path` and a fix."""
    if path.exists():
        return path
    raise DatasetNotFoundError(missing_message(name, path, how or "it is not downloaded automatically"))


# --------------------------------------------------------------------------------------------------
# Atomic writes: build in a temporary sibling, then rename into place (rename is atomic on POSIX).
# --------------------------------------------------------------------------------------------------
@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """`with atomic_file(dest) as tmp:` write `tmp`; it becomes `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """`with atomic_dir(dest) as tmp:` fill folder `tmp`; it is renamed to `dest` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first: keep theirs
            if not dest.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Downloading: one file, streamed to a temporary sibling, checksum-checked, then renamed into place.
# --------------------------------------------------------------------------------------------------
class ChecksumError(OSError):
    """A downloaded file does not have the checksum it must have (it was not kept)."""


def download_file(url: str, dest: Path, *, sha256: str | None = None, md5: str | None = None,
                  progress: bool = True, timeout: float = 30) -> Path:
    """Download `url` to `dest` with a progress bar, check its sha256 / md5, then move it in place.

    On any error (network, `timeout` seconds without data, `ChecksumError`) `dest` is left untouched."""
    from tqdm.auto import tqdm

    hasher = hashlib.sha256() if sha256 else hashlib.md5()
    with atomic_file(dest) as tmp, urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(dest).name, disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                hasher.update(chunk)
                bar.update(len(chunk))
        expected = (sha256 or md5 or "").lower()
        if expected and hasher.hexdigest() != expected:
            raise ChecksumError(f"checksum mismatch for {url}: got {hasher.hexdigest()}, expected {expected}")
    return dest


# Public API (imported last: the submodules use the helpers above).
from .speech import FSDD, AudioCollator, ChainedClips, LibriSpeech, SpeechCommands, load_audio, normalize_audio  # noqa: E402
from .image import (  # noqa: E402
    CIFAR10, FashionMNIST, ImageFolderDataset, eval_transform, pretrain_transform,
)
from .text import TextCollator, Tokenizer, TokenBlocks, encode_corpus, read_corpus, text_blocks  # noqa: E402
from .probe import PROBE_TASKS, ProbeTask, probe_task  # noqa: E402
from .download import DownloadError, download_allowed, ensure, mirror_url  # noqa: E402

__all__ = [
    "DatasetNotFoundError", "data_root", "cache_dir", "require", "atomic_file", "atomic_dir", "download_file",
    "ChecksumError", "DownloadError", "download_allowed", "ensure", "mirror_url", "missing_message",
    "load_audio", "normalize_audio", "FSDD", "SpeechCommands", "LibriSpeech", "AudioCollator", "ChainedClips",
    "pretrain_transform", "eval_transform", "FashionMNIST", "CIFAR10", "ImageFolderDataset",
    "Tokenizer", "read_corpus", "encode_corpus", "TokenBlocks", "text_blocks", "TextCollator",
    "ProbeTask", "probe_task", "PROBE_TASKS",
]
