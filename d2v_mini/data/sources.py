"""Where each data set comes from when it is missing, keyed by its path under the data root.

`download.ensure(key)` fetches `SOURCES[key]` from `D2V_MIRROR_URL` when that is set (the same path under
the mirror URL, checked against the mirror's SHA256SUMS), else with its `fetch` from the original host.
`check` (if any) runs on a complete download from either source before it is kept.

| key (path under the data root)    | original host (check)                                                 | on disk |
|-----------------------------------|-----------------------------------------------------------------------|---------|
| fsdd/recordings                   | GitHub archive of Jakobovski/free-spoken-digit-dataset (content hash) | 21 MB   |
| speech_commands_mini              | 300 clips cut out of the streamed v0.01 tarball, 1.4 GB (its sha256)  | 10 MB   |
| speech_commands                   | the v0.01 tarball (sha256)                                            | 1.4 GB  |
| librispeech/LibriSpeech/<split>   | mirror only (without one the loader reads openslr/librispeech_asr)    |         |
| fashion_mnist/<file>.gz           | Zalando's server (md5)                                                | 31 MB   |
| cifar10/cifar10_jpg.tar.gz        | mirror; else the python pickles -> cifar10/cifar-10-batches-py (md5)  | 186 MB  |
| text/tinyshakespeare/input.txt    | karpathy/char-rnn (sha256)                                            | 1.1 MB  |
| text/wikitext-{2,103}/<split>.txt | `datasets`: Salesforce/wikitext                                       | 540 MB  |
| text/sentence_polarity            | Cornell's rt-polaritydata.tar.gz (sentence counts)                    | 1.3 MB  |
| text/subjectivity                 | Cornell's rotten_imdb.tar.gz (sentence counts)                        | 1.3 MB  |
| tokenizers/gpt2                   | Hugging Face openai-community/gpt2 vocab.json, merges.txt (50,257)    | 1.5 MB  |
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import ChecksumError, download_file

MANIFESTS = Path(__file__).parent / "manifests"
CORNELL = "https://www.cs.cornell.edu/people/pabo/movie-review-data/"


@dataclass(frozen=True)
class Source:
    title: str  # the data set's name in messages
    path: str  # its path under the data root (= under the mirror URL): a file or a folder
    origin: str  # the original host, in words
    fetch: Callable[[Path], None] | None = None  # writes it into the temporary file / folder it is given
    folder: bool = False  # `fetch` writes a folder (else one file)
    fetch_to: str | None = None  # where `fetch`'s result goes, if not `path` (CIFAR-10's original pickles)
    check: Callable[[Path], None] | None = None  # raises if a complete download is not what it must be


# ------------------------------------------------------------------------------------- checks
def _count_lines(folder: Path, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        got = sum(1 for line in (folder / name).read_bytes().splitlines() if line.strip())
        if got != n:
            raise ValueError(f"{name} has {got} sentences, expected {n}")


def _check_fsdd(folder: Path) -> None:
    from .speech import FSDD

    wavs = sorted(folder.glob("*.wav"))
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in wavs)
    if hashlib.sha256(sums.encode()).hexdigest() != FSDD.CONTENT_SHA256:
        raise ChecksumError(f"the {len(wavs)} FSDD recordings are not the expected 3,000")


def _mini_clips() -> list[str]:
    """The 300 `{word}/{file}.wav` clips of speech_commands_mini (30 words x 10 clips of v0.01)."""
    return (MANIFESTS / "speech_commands_mini.txt").read_text().split()


def _check_mini(folder: Path) -> None:
    missing = [c for c in _mini_clips() + ["testing_list.txt", "validation_list.txt"] if not (folder / c).exists()]
    if missing:
        raise ValueError(f"speech_commands_mini lacks {len(missing)} files, e.g. {missing[:3]}")


def _check_gpt2(folder: Path) -> None:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if len(vocab) != 50257 or not (folder / "merges.txt").exists():
        raise ValueError(f"vocab.json has {len(vocab)} tokens, GPT-2 has 50,257 (and merges.txt)")


# ------------------------------------------------------------------------------ original hosts
class _HashingReader(io.RawIOBase):
    """A read-only stream over an HTTP response that hashes (sha256) what passes through it."""

    def __init__(self, response):
        self.response, self.sha256, self.bytes = response, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.response.read(len(buffer))
        self.sha256.update(data)
        self.bytes += len(data)
        buffer[:len(data)] = data
        return len(data)


def _extract(archive: Path, tmp: Path, wanted: Callable[[str], str | None]) -> None:
    """Write each regular member whose name `wanted` maps to a relative path to tmp/<that path>."""
    with tarfile.open(archive) as tar:
        for member in tar:
            rel = wanted(member.name) if member.isfile() else None
            if rel:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(tar.extractfile(member).read())


def _fetch_fsdd(tmp: Path) -> None:
    from .speech import FSDD

    archive = download_file(FSDD.URL, tmp / ".archive.tar.gz")  # GitHub archives are not byte-stable: check
    _extract(archive, tmp, lambda n: Path(n).name if "/recordings/" in n and n.endswith(".wav") else None)
    archive.unlink()


def _fetch_speech_commands(tmp: Path) -> None:
    from .speech import SpeechCommands

    archive = download_file(SpeechCommands.URL, tmp / ".archive.tar.gz", sha256=SpeechCommands.SHA256)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    archive.unlink()


def _fetch_speech_commands_mini(tmp: Path) -> None:
    """Stream the v0.01 tarball once (1.4 GB, never stored) and keep the 300 clips of the manifest, the
    split lists and the licence; the tarball's sha256 is checked at its end, before the folder is kept."""
    from tqdm.auto import tqdm

    from .speech import SpeechCommands

    keep = set(_mini_clips()) | {"testing_list.txt", "validation_list.txt", "LICENSE"}
    with urllib.request.urlopen(SpeechCommands.URL, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        stream = _HashingReader(response)
        with tqdm(total=total, unit="B", unit_scale=True, desc="speech_commands_v0.01.tar.gz") as bar:
            with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|gz") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if member.isfile() and name in keep:
                        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                        (tmp / name).write_bytes(tar.extractfile(member).read())
                    bar.update(stream.bytes - bar.n)
            while stream.read(1 << 20):  # tar stops at its end-of-archive blocks: hash the rest too
                pass
    if stream.sha256.hexdigest() != SpeechCommands.SHA256:
        raise ChecksumError(f"checksum mismatch for {SpeechCommands.URL}: got {stream.sha256.hexdigest()}")


def _fetch_cifar10(tmp: Path) -> None:
    """CIFAR-10's python pickles (torchvision's layout `cifar-10-batches-py/`), md5-checked."""
    url, md5 = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
    archive = download_file(url, tmp / ".archive.tar.gz", md5=md5)
    _extract(archive, tmp, lambda n: Path(n).name if n.startswith("cifar-10-batches-py/") else None)
    archive.unlink()


def _fetch_fashion(name: str) -> Callable[[Path], None]:
    def fetch(tmp: Path) -> None:
        from .image import FashionMNIST

        download_file(FashionMNIST.URL + name, tmp, md5=FashionMNIST.MD5[name])
    return fetch


def _fetch_shakespeare(tmp: Path) -> None:
    from . import text

    download_file(text.SHAKESPEARE_URL, tmp, sha256=text.SHAKESPEARE_SHA256)


def _fetch_wikitext(name: str, split: str) -> Callable[[Path], None]:
    def fetch(tmp: Path) -> None:
        from .text import _download_wikitext

        _download_wikitext(name, split, tmp)
    return fetch


def _fetch_cornell(archive_name: str, files: dict[str, str]) -> Callable[[Path], None]:
    """Fetch one of Pang & Lee's tarballs and keep `files` (member base name -> name in the data root)."""
    def fetch(tmp: Path) -> None:
        archive = download_file(CORNELL + archive_name, tmp / ".archive.tar.gz")  # no published checksum
        _extract(archive, tmp, lambda n: files.get(Path(n).name))
        archive.unlink()
    return fetch


def _fetch_gpt2(tmp: Path) -> None:
    for name in ("vocab.json", "merges.txt"):  # no pinned hash: `_check_gpt2` and the tokenizer check structure
        download_file(f"https://huggingface.co/openai-community/gpt2/resolve/main/{name}", tmp / name)


# ------------------------------------------------------------------------------------ registry
def _sources() -> dict[str, Source]:
    fsdd_url = "https://github.com/Jakobovski/free-spoken-digit-dataset"
    tf = "download.tensorflow.org/data/speech_commands_v0.01.tar.gz"
    out = [
        Source("FSDD (free spoken digit dataset)", "fsdd/recordings", f"the GitHub archive of {fsdd_url}",
               _fetch_fsdd, folder=True, check=_check_fsdd),
        Source("Speech Commands (mini, 300 clips)", "speech_commands_mini",
               f"its 300 clips streamed out of {tf} (1.4 GB)", _fetch_speech_commands_mini, folder=True,
               check=_check_mini),
        Source("Speech Commands v0.01", "speech_commands", tf, _fetch_speech_commands, folder=True),
        Source("CIFAR-10", "cifar10/cifar10_jpg.tar.gz", "www.cs.toronto.edu/~kriz (python version)",
               _fetch_cifar10, folder=True, fetch_to="cifar10/cifar-10-batches-py"),
        Source("tiny-shakespeare", "text/tinyshakespeare/input.txt", "github.com/karpathy/char-rnn",
               _fetch_shakespeare),
        Source("sentence polarity (Pang & Lee)", "text/sentence_polarity", CORNELL + "rt-polaritydata.tar.gz",
               _fetch_cornell("rt-polaritydata.tar.gz", {"rt-polarity.pos": "rt-polarity.pos",
                                                         "rt-polarity.neg": "rt-polarity.neg",
                                                         "rt-polaritydata.README.1.0.txt": "README.txt"}),
               folder=True, check=lambda f: _count_lines(f, {"rt-polarity.pos": 5331, "rt-polarity.neg": 5331})),
        Source("subjectivity (Pang & Lee)", "text/subjectivity", CORNELL + "rotten_imdb.tar.gz",
               _fetch_cornell("rotten_imdb.tar.gz", {"quote.tok.gt9.5000": "quote.tok.gt9.5000",
                                                     "plot.tok.gt9.5000": "plot.tok.gt9.5000",
                                                     "subjdata.README.1.0": "README.txt"}),
               folder=True, check=lambda f: _count_lines(f, {"quote.tok.gt9.5000": 5000, "plot.tok.gt9.5000": 5000})),
        Source("GPT-2 BPE tokenizer", "tokenizers/gpt2", "huggingface.co/openai-community/gpt2", _fetch_gpt2,
               folder=True, check=_check_gpt2),
    ]
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        out.append(Source("Fashion-MNIST", f"fashion_mnist/{name}", "Zalando's fashion-mnist server",
                          _fetch_fashion(name)))
    for corpus in ("wikitext-2", "wikitext-103"):
        for split in ("train", "valid", "test"):
            out.append(Source(f"{corpus} {split}", f"text/{corpus}/{split}.txt",
                              "the Hugging Face hub (Salesforce/wikitext, through `datasets`)",
                              _fetch_wikitext(corpus, split)))
    for split in ("test-clean", "dev-clean", "train-clean-100", "train-clean-360", "test-other", "dev-other",
                  "train-other-500"):
        out.append(Source(f"LibriSpeech {split}", f"librispeech/LibriSpeech/{split}",
                          "the Hugging Face hub (openslr/librispeech_asr; LibriSpeech(download=True) reads it "
                          "there without a mirror)"))
    return {s.path: s for s in out}


SOURCES = _sources()


def source(key: str) -> Source:
    """The Source of a data set, by its path under the data root (see the table above)."""
    if key not in SOURCES:
        raise KeyError(f"no known source for {key!r}; known: {sorted(SOURCES)}")
    return SOURCES[key]
