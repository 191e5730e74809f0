"""Getting a missing data set: from a mirror (`D2V_MIRROR_URL`) or its original host, verified, atomically.

    path = ensure("fsdd/recordings")     # the data set's path under the data root; fetched first if missing

**When.** Downloading is on by default. `D2V_DOWNLOAD=never` (or the CLI's `--no-download`) turns it off;
a loader's `download=True` / `download=False` overrides the environment for that call (`None`: follow it).

**From where.** With `D2V_MIRROR_URL=<url>`, every data set comes from `<url>/<its path under the data
root>` (the data root's layout: `<url>/fsdd/recordings/0_george_0.wav`, ...), and the mirror's
`<url>/SHA256SUMS` (`sha256sum` output, read once per process) is the manifest: it lists the files of a
folder and the sha256 each must have; a file it does not list is refused. Without a mirror, `sources.py`
says how each data set is fetched from its original host (or the Hugging Face hub through `datasets`).

**How.** A file is streamed into a temporary sibling with a progress bar, its checksum checked, and only
then renamed into place; a folder is built in a temporary sibling folder (the files of a mirror folder 8 at
a time) and renamed once complete and checked. A failed or refused download leaves nothing behind, and
raises `DownloadError` (a `DatasetNotFoundError`) with a one-line message: which data set, the data root,
why, and the two ways to get it.
"""
from __future__ import annotations

import os
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from . import DatasetNotFoundError, atomic_dir, atomic_file, data_root, download_file, missing_message

DOWNLOAD_ENV, MIRROR_ENV = "D2V_DOWNLOAD", "D2V_MIRROR_URL"
_OFF = ("never", "0", "no", "false", "off")
_ON = ("", "always", "1", "yes", "true", "on", "auto")
WORKERS = 8  # concurrent file downloads of a mirror folder (FSDD: 3,000 WAVs)
TIMEOUT = 30  # seconds without an answer before a download fails
_MANIFESTS: dict[str, dict[str, str]] = {}  # mirror URL -> {path under the data root: sha256}


class DownloadError(DatasetNotFoundError):
    """A missing data set could not be downloaded (network, checksum, source); the message says how to get it."""


def download_allowed(download: bool | None = None) -> bool:
    """`download` if it is True / False, else the environment: False iff D2V_DOWNLOAD is never/0/no/false/off."""
    if download is not None:
        return bool(download)
    value = os.environ.get(DOWNLOAD_ENV, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ValueError(f"{DOWNLOAD_ENV}={value!r}: expected 'never' (no downloads) or 'always' (the default)")


def mirror_url() -> str | None:
    """The mirror's base URL (env D2V_MIRROR_URL, trailing '/' dropped), or None."""
    return os.environ.get(MIRROR_ENV, "").strip().rstrip("/") or None


def mirror_file_url(url: str, rel: str) -> str:
    """`<url>/<rel>`, with `rel` (a path under the data root) percent-quoted."""
    return f"{url}/{urllib.parse.quote(rel)}"


def mirror_manifest(url: str) -> dict[str, str]:
    """The mirror's SHA256SUMS as {path under the data root: sha256}, fetched once per URL and process."""
    if url not in _MANIFESTS:
        with urllib.request.urlopen(mirror_file_url(url, "SHA256SUMS"), timeout=TIMEOUT) as response:
            lines = response.read().decode("utf-8").splitlines()
        sums = {}
        for line in lines:  # "<sha256>  <path>" (text mode) or "<sha256> *<path>" (binary mode)
            digest, _, name = line.strip().partition(" ")
            if digest and name:
                sums[name.strip().lstrip("*").removeprefix("./")] = digest.lower()
        _MANIFESTS[url] = sums
    return _MANIFESTS[url]


def fetch_from_mirror(url: str, rel: str, dest: Path, check: Callable[[Path], None] | None = None) -> Path:
    """Fetch `rel` (a file, or every file listed under the folder `rel/`) from the mirror into `dest`,
    each file checked against the mirror's SHA256SUMS; `check(folder)` runs on a complete folder before it
    is kept. Raises DownloadError when the manifest lists nothing for `rel`, ChecksumError on a bad file."""
    sums = mirror_manifest(url)
    if rel in sums:
        return download_file(mirror_file_url(url, rel), dest, sha256=sums[rel])
    files = {name[len(rel) + 1:]: digest for name, digest in sums.items() if name.startswith(rel + "/")}
    if not files:
        raise DownloadError(f"the mirror's {url}/SHA256SUMS lists neither {rel} nor files under {rel}/")
    from tqdm.auto import tqdm

    with atomic_dir(dest) as tmp, ThreadPoolExecutor(WORKERS) as pool:
        jobs = [pool.submit(download_file, mirror_file_url(url, f"{rel}/{name}"), tmp / name, sha256=digest,
                            progress=False) for name, digest in sorted(files.items())]
        try:
            for job in tqdm(jobs, desc=rel, unit="file", disable=len(jobs) < 2):
                job.result()
        except BaseException:
            for job in jobs:
                job.cancel()
            raise
        if check:
            check(tmp)
    return dest


def ensure(key: str, root: str | Path | None = None, download: bool | None = None) -> Path:
    """The path of data set `key` (its path under the data root, see `sources.SOURCES`), downloaded first
    if it is missing and downloading is allowed. Returns the existing path (for CIFAR-10 from its original
    host: the folder of python pickles instead of the mirror's JPEG archive).

    Raises DatasetNotFoundError when it is missing and downloading is off, DownloadError when the download
    fails or is refused (checksum, structure)."""
    from .sources import source

    spec = source(key)
    base = data_root(root)
    for rel in (spec.path, spec.fetch_to):
        if rel and (base / rel).exists():
            return base / rel
    dest = base / spec.path
    if not download_allowed(download):
        why = "download=False was passed" if download is False else f"downloading is off ({DOWNLOAD_ENV}=never)"
        raise DatasetNotFoundError(missing_message(spec.title, dest, why, base))
    url = mirror_url()
    origin = f"the mirror {url}" if url else spec.origin
    try:
        if url:
            return fetch_from_mirror(url, spec.path, dest, spec.check)
        if spec.fetch is None:
            raise DownloadError(f"there is no download for it without a mirror: {spec.origin}")
        dest = base / (spec.fetch_to or spec.path)
        with (atomic_dir if spec.folder else atomic_file)(dest) as tmp:
            spec.fetch(tmp)
            if spec.check:
                spec.check(tmp)
        return dest
    except Exception as e:  # network, HTTP, checksum, structure, a missing `datasets`: one message
        raise DownloadError(missing_message(spec.title, dest, f"could not be downloaded from {origin} "
                                            f"({type(e).__name__}: {e})", base)) from e


def hub_download(title: str, dest: Path, load: Callable, root: str | Path | None = None):
    """Run `load()` (a Hugging Face `datasets` call) and turn its failure into a one-line DownloadError."""
    try:
        return load()
    except Exception as e:
        raise DownloadError(missing_message(title, dest, f"could not be read from the Hugging Face hub "
                                            f"({type(e).__name__}: {e})", data_root(root))) from e


__all__ = ["DownloadError", "download_allowed", "mirror_url", "mirror_manifest", "fetch_from_mirror", "ensure",
           "hub_download", "DOWNLOAD_ENV", "MIRROR_ENV"]
