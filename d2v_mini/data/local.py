"""The paper's data through `--dataset`: local folders and files, fairseq manifests, Hugging Face text.

    kind, where = classify("speech", "/data/train.tsv")        # ("manifest", Path)
    ds = AudioManifest("/data/train.tsv")                       # fairseq wav2vec manifest
    ds = AudioFolder(["/data/LibriSpeech/train-clean-100", "/data/LibriSpeech/train-clean-360"])
    text = local_text(["/data/books.txt"])                       # UTF-8 text, one paragraph per line
    blocks = hf_text_blocks("hf:wikitext:wikitext-103-raw-v1", tokenizer, 512, max_blocks=100_000)

What a `--dataset` value means besides the named data sets of `pipeline.DATASETS`:
| modality | value                                    | read as                                            |
|----------|------------------------------------------|----------------------------------------------------|
| image    | a folder with `train/<class>/*` or       | `ImageFolderDataset` (ImageNet layout; the labels  |
|          | `<class>/*` image files                  | are dropped for pretraining)                       |
| speech   | a `.tsv` file                            | fairseq manifest: line 1 the root folder, then     |
|          |                                          | `relative/path<TAB>num_samples` per clip           |
| speech   | folders, comma-separated (LibriSpeech    | every .flac / .wav below them (sorted), sizes from |
|          | train-clean-100,train-clean-360,...)     | the file headers                                   |
| text     | `.txt` files (comma-separated) or a      | their UTF-8 text (a folder: its *.txt, sorted)     |
|          | folder of them                           |                                                    |
| text     | `hf:<name>[:<config>]`                   | the Hugging Face data set's train split, its       |
|          |                                          | "text" column; streamed (online only)              |
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .speech import _AudioFiles, audio_size
from .text import TokenBlocks

AUDIO_SUFFIXES = (".flac", ".wav")
HF_PREFIX = "hf:"


def _paths(value: str) -> list[Path]:
    return [Path(p).expanduser() for p in value.split(",") if p.strip()]


def classify(modality: str, value: str) -> tuple[str, object]:
    """What a `--dataset` value that is not a named data set refers to, as (kind, where):
    ("image_folder", Path), ("manifest", Path), ("audio_folders", [Path]), ("text_files", [Path]),
    ("hf", (name, config or None)). Raises ValueError saying what was expected."""
    if modality == "text" and value.startswith(HF_PREFIX):
        name, _, config = value[len(HF_PREFIX):].partition(":")
        if not name:
            raise ValueError(f"--dataset {value!r}: expected hf:<name>[:<config>], "
                             f"e.g. hf:wikitext:wikitext-103-raw-v1")
        return "hf", (name, config or None)
    paths = _paths(value)
    missing = [str(p) for p in paths if not p.exists()]
    if not paths or missing:
        raise ValueError(f"{modality} data set {value!r} is neither a named data set nor an existing path "
                         f"(missing: {missing or value!r}). " + EXPECTED[modality])
    if modality == "image":
        folder = paths[0] / "train" if (paths[0] / "train").is_dir() else paths[0]
        if len(paths) != 1 or not folder.is_dir():
            raise ValueError(f"image data set {value!r}: " + EXPECTED["image"])
        return "image_folder", folder
    if modality == "speech":
        if len(paths) == 1 and paths[0].is_file():
            if paths[0].suffix != ".tsv":
                raise ValueError(f"speech data set {value!r} is a file but not a .tsv manifest. " + EXPECTED["speech"])
            return "manifest", paths[0]
        if not all(p.is_dir() for p in paths):
            raise ValueError(f"speech data set {value!r}: " + EXPECTED["speech"])
        return "audio_folders", paths
    files = []
    for p in paths:
        files += sorted(p.glob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"text data set {value!r} has no .txt file. " + EXPECTED["text"])
    return "text_files", files


EXPECTED = {
    "image": "Expected a folder in ImageNet layout: <folder>/train/<class>/*.jpg or <folder>/<class>/*.jpg.",
    "speech": "Expected a fairseq manifest (.tsv: first line the root folder, then relative/path<TAB>num_samples) "
              "or comma-separated folders of .flac / .wav files (e.g. LibriSpeech/train-clean-100).",
    "text": "Expected .txt files (comma-separated), a folder of .txt files, or hf:<name>[:<config>] "
            "(a Hugging Face data set with a 'text' column).",
}


# ------------------------------------------------------------------------------------------ speech
class AudioManifest(_AudioFiles):
    """A fairseq wav2vec manifest: line 1 is the root folder, then one `relative/path<TAB>num_samples`
    line per clip (fairseq `examples/wav2vec/wav2vec_manifest.py`). `sizes` are the manifest's sample
    counts (at the file's rate: give files at `sample_rate`, as fairseq does). Clips are decoded on
    access (not cached: a 960 h manifest does not fit in memory).
    Item: dict(source=float [N] at `sample_rate`, normalised per utterance, path=str)."""

    def __init__(self, manifest: str | Path, sample_rate: int = 16_000, normalize: bool = True):
        lines = Path(manifest).read_text().splitlines()
        if not lines:
            raise ValueError(f"manifest {manifest} is empty: expected the root folder on line 1")
        root, rows = Path(lines[0].strip()), [ln.split("\t") for ln in lines[1:] if ln.strip()]
        bad = [i + 2 for i, r in enumerate(rows) if len(r) < 2 or not r[1].strip().isdigit()]
        if bad:
            raise ValueError(f"manifest {manifest}: line(s) {bad[:5]} are not 'relative/path<TAB>num_samples'")
        super().__init__([root / r[0] for r in rows], sample_rate, normalize)
        self._sizes = [int(r[1]) for r in rows]

    def __getitem__(self, i: int) -> dict:
        return dict(source=self.wave(i), path=str(self.paths[i]))

    def wave(self, i: int) -> torch.Tensor:
        wav = super().wave(i)
        self._cache.pop(i, None)
        return wav


class AudioFolder(AudioManifest):
    """Every .flac / .wav file below `folders` (sorted), e.g. LibriSpeech's train-clean-100,
    train-clean-360 and train-other-500 for the 960 h of the speech recipe; sizes from the file headers.
    Item: dict(source=float [N] at `sample_rate`, normalised per utterance, path=str)."""

    def __init__(self, folders: Iterable[str | Path], sample_rate: int = 16_000, normalize: bool = True):
        folders = [Path(f) for f in folders]
        paths = sorted(p for f in folders for p in f.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not paths:
            raise ValueError(f"no .flac / .wav file below {[str(f) for f in folders]}")
        _AudioFiles.__init__(self, paths, sample_rate, normalize)
        self._sizes = None  # read from the headers on first use (`sizes`)


def write_manifest(folder: str | Path, out: str | Path, sample_rate: int | None = None) -> Path:
    """Write a fairseq manifest of every .flac / .wav below `folder` (sizes from the headers, at the
    file's rate unless `sample_rate`): line 1 the folder, then `relative/path<TAB>num_samples`."""
    folder = Path(folder).resolve()
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    lines = [str(folder)] + [f"{p.relative_to(folder)}\t{audio_size(p, sample_rate)}" for p in paths]
    Path(out).write_text("\n".join(lines) + "\n")
    return Path(out)


# -------------------------------------------------------------------------------------------- text
def local_text(files: Iterable[str | Path]) -> str:
    """The UTF-8 text of `files`, concatenated (each file ends with a newline)."""
    parts = [Path(f).read_text(encoding="utf-8") for f in files]
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def hf_rows(name: str, config: str | None = None, column: str = "text") -> Iterable[str]:
    """The `column` of a Hugging Face data set's train split, streamed row by row (needs internet)."""
    import datasets

    ds = datasets.load_dataset(name, config, split="train", streaming=True)
    return (row[column] for row in ds)


def pack_blocks(texts: Iterable[str], tokenizer, block_size: int, max_blocks: int | None = None,
                chunk: int = 1000) -> TokenBlocks:
    """Blocks `<s> t_1 ... t_{L-2} </s>` of L = block_size tokens from a stream of texts: every non-empty
    line stripped, encoded and followed by `</s>` (as `encode_corpus`), read only until `max_blocks`
    blocks are full (None: the whole stream). Returns `TokenBlocks` (items dict(source=long [L]))."""
    body, parts, count, lines = block_size - 2, [], 0, []

    def flush():
        nonlocal count
        encoded = tokenizer.encode_batch(lines)
        ids = np.array([i for e in encoded for i in (*e, tokenizer.eos_id)], dtype=np.int32)
        parts.append(ids)
        count += len(ids)
        lines.clear()

    for text in texts:
        lines += [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(lines) >= chunk:
            flush()
            if max_blocks is not None and count >= max_blocks * body:
                break
    if lines and (max_blocks is None or count < max_blocks * body):
        flush()
    ids = torch.from_numpy(np.concatenate(parts or [np.zeros(0, np.int32)])).long()
    if max_blocks is not None:
        ids = ids[:max_blocks * body]
    return TokenBlocks(ids, block_size, tokenizer.bos_id, tokenizer.eos_id)


__all__ = ["classify", "AudioManifest", "AudioFolder", "write_manifest", "local_text", "hf_rows", "pack_blocks",
           "EXPECTED", "HF_PREFIX"]
