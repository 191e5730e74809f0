"""Speech data: read waveforms, normalise them, and batch them the way fairseq's wav2vec 2.0 does.

Every item is a dict with `source`: a float32 waveform `[N]` at 16 kHz, zero mean and unit variance
per utterance (fairseq `normalize: true`, which data2vec speech uses). `AudioCollator` turns a list of
items into `source: [B, N]` plus `padding_mask: [B, N]` (True = padding).

Audio is read with `soundfile` only (WAV, FLAC): `torchaudio.load` and `datasets`' audio decoding go
through TorchCodec, which is not available everywhere.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import BinaryIO

import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from einops import reduce
from torch.utils.data import Dataset

from ..errors import DataFileError
from . import DatasetNotFoundError, atomic_dir, data_root, download_file, require


def load_audio(path: str | Path | BinaryIO, sample_rate: int | None = 16_000) -> torch.Tensor:
    """Read an audio file (or file-like object) as float32 `[N]` in [-1, 1].

    Multichannel audio is downmixed to mono by averaging the channels. If the file's rate differs
    from `sample_rate`, it is resampled with `torchaudio.functional.resample` (None: keep the rate).
    A file that cannot be decoded raises DataFileError naming it (a missing one FileNotFoundError).
    """
    if isinstance(path, (str, Path)) and not Path(path).exists():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        wav, rate = sf.read(path, dtype="float32", always_2d=True)  # [N, C]
    except (RuntimeError, OSError, ValueError, EOFError) as e:  # soundfile.LibsndfileError is a RuntimeError
        name = path if isinstance(path, (str, Path)) else getattr(path, "name", "an in-memory audio file")
        raise DataFileError(f"cannot decode audio file {name} ({str(e).strip() or type(e).__name__}): the file is "
                            f"corrupted or not WAV/FLAC; replace it, or pass --skip-bad-files (SkipBadItems) "
                            f"to skip unreadable files") from None
    wav = reduce(torch.from_numpy(wav), "n c -> n", "mean")
    if sample_rate is not None and rate != sample_rate:
        wav = AF.resample(wav, orig_freq=rate, new_freq=sample_rate)
    return wav


def normalize_audio(wav: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the last axis: `[..., N] -> [..., N]` (fairseq: layer_norm of the wave)."""
    return F.layer_norm(wav, wav.shape[-1:])


class _AudioFiles(Dataset):
    """Shared base: a list of audio files, decoded on first access and kept in memory (per process)."""

    def __init__(self, paths: list[Path], sample_rate: int, normalize: bool):
        self.paths, self.sample_rate, self.normalize = paths, sample_rate, normalize
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def wave(self, i: int) -> torch.Tensor:
        """The waveform of item `i`: float `[N]`."""
        if i not in self._cache:
            wav = load_audio(self.paths[i], self.sample_rate)
            self._cache[i] = normalize_audio(wav) if self.normalize else wav
        return self._cache[i]


class FSDD(_AudioFiles):
    """Free Spoken Digit Dataset: 3,000 recordings `{digit}_{speaker}_{take}.wav`, 8 kHz, 6 speakers.

    Official split: takes 0-4 are the test set (300 items), takes 5-49 the train set (2,700);
    `split="all"` gives all 3,000. Item: dict(source=float [N] at `sample_rate` (16 kHz: resampled
    from 8 kHz), label=int digit, speaker=int index into `self.speakers` (sorted names), path=str).
    """

    URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.tar.gz"
    # sha256 of the sorted "sha256  name" lines of the 3,000 WAVs (GitHub archives are not byte-stable)
    CONTENT_SHA256 = "1801eae019c063377d98f831d3f93574f259475df7332bb0e3d1b080fb5e6959"

    def __init__(self, split: str = "train", root: str | Path | None = None, sample_rate: int = 16_000,
                 normalize: bool = True, download: bool = False):
        if split not in ("train", "test", "all"):
            raise ValueError(f"FSDD split must be 'train', 'test' or 'all', not {split!r}")
        folder = data_root(root) / "fsdd" / "recordings"
        if download and not folder.exists():
            self._download(folder)
        require(folder, "FSDD (free spoken digit dataset)", f"Online: FSDD(download=True) fetches {self.URL}")
        files = sorted(folder.glob("*.wav"))
        if not files:
            raise DataFileError(f"{folder} holds no .wav file: expected FSDD's {{digit}}_{{speaker}}_{{take}}.wav "
                                f"recordings there")
        meta = [p.stem.split("_") for p in files]  # [digit, speaker, take]
        odd = [p.name for p, m in zip(files, meta) if len(m) != 3 or not (m[0].isdigit() and m[2].isdigit())]
        if odd:
            raise DataFileError(f"{folder}: {len(odd)} file name(s) not of the form "
                                f"{{digit}}_{{speaker}}_{{take}}.wav, e.g. {odd[0]}: move them out of the recordings "
                                f"folder")
        self.speakers = sorted({speaker for _, speaker, _ in meta})
        chosen = [(p, m) for p, m in zip(files, meta) if split == "all" or (int(m[2]) < 5) == (split == "test")]
        super().__init__([p for p, _ in chosen], sample_rate, normalize)
        self.labels = [int(m[0]) for _, m in chosen]
        self.speaker_ids = [self.speakers.index(m[1]) for _, m in chosen]

    def __getitem__(self, i: int) -> dict:
        return dict(source=self.wave(i), label=self.labels[i], speaker=self.speaker_ids[i], path=str(self.paths[i]))

    @classmethod
    def _download(cls, folder: Path) -> None:
        archive = download_file(cls.URL, folder.parent / "fsdd-master.tar.gz")
        with atomic_dir(folder) as tmp, tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if "/recordings/" in member.name and member.name.endswith(".wav"):
                    (tmp / Path(member.name).name).write_bytes(tar.extractfile(member).read())
            wavs = sorted(tmp.glob("*.wav"))
            sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in wavs)
            if hashlib.sha256(sums.encode()).hexdigest() != cls.CONTENT_SHA256:
                raise OSError("FSDD download does not match the expected 3,000 recordings")
        archive.unlink()


class SpeechCommands(_AudioFiles):
    """Speech Commands v0.01 keyword clips, `{word}/{speaker}_nohash_{n}.wav` at 16 kHz (~1 s).

    Default: the mirror's 300-clip subset `speech_commands_mini/` (30 words x 10 clips); `full=True`
    reads the full v0.01 set from `speech_commands/` (download=True fetches it, 1.4 GB).
    Split as in the original: `testing_list.txt` -> "test", `validation_list.txt` -> "validation",
    the rest -> "train". Item: dict(source=float [N], label=int index into `self.classes`, path=str).
    """

    URL = "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz"
    SHA256 = "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d"

    def __init__(self, split: str = "train", root: str | Path | None = None, sample_rate: int = 16_000,
                 normalize: bool = True, full: bool = False, download: bool = False):
        if split not in ("train", "validation", "test"):
            raise ValueError(f"SpeechCommands split must be 'train', 'validation' or 'test', not {split!r}")
        folder = data_root(root) / ("speech_commands" if full else "speech_commands_mini")
        if download and not folder.exists():
            if not full:
                raise DatasetNotFoundError(f"the 300-clip subset {folder} exists only in the data mirror; "
                                           "use SpeechCommands(full=True, download=True) for the full set")
            with atomic_dir(folder) as tmp:
                archive = download_file(self.URL, tmp / "archive.tar.gz", sha256=self.SHA256)
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
                archive.unlink()
        require(folder, "Speech Commands" + ("" if full else " (mini)"),
                "" if full else "The 300-clip subset is part of the data mirror only.")
        valid = set((folder / "validation_list.txt").read_text().split())  # "{word}/{file}.wav" lines
        test = set((folder / "testing_list.txt").read_text().split())
        self.classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))
        chosen = []
        for path in sorted(folder.glob("*/*_nohash_*.wav")):
            rel = f"{path.parent.name}/{path.name}"
            which = "test" if rel in test else "validation" if rel in valid else "train"
            if which == split and path.parent.name in self.classes:
                chosen.append(path)
        super().__init__(chosen, sample_rate, normalize)
        self.labels = [self.classes.index(p.parent.name) for p in chosen]

    def __getitem__(self, i: int) -> dict:
        return dict(source=self.wave(i), label=self.labels[i], path=str(self.paths[i]))


class LibriSpeech(Dataset):
    """LibriSpeech utterances: `LibriSpeech/<split>/<speaker>/<chapter>/*.flac` + `<spk>-<chapter>.trans.txt`.

    Reads the folder layout under `<root>/librispeech/` (the mirror holds 4 test-clean utterances).
    With `download=True` and no folder, the split is read from the Hugging Face hub instead
    (`openslr/librispeech_asr` through `datasets`, audio decoding off, bytes decoded with soundfile).
    Item: dict(source=float [N] at 16 kHz, transcript=str (upper case), path=str).
    """

    HF_SPLITS = {"test-clean": ("clean", "test"), "dev-clean": ("clean", "validation"),
                 "train-clean-100": ("clean", "train.100"), "train-clean-360": ("clean", "train.360"),
                 "test-other": ("other", "test"), "dev-other": ("other", "validation"),
                 "train-other-500": ("other", "train.500")}

    def __init__(self, split: str = "test-clean", root: str | Path | None = None, sample_rate: int = 16_000,
                 normalize: bool = True, download: bool = False):
        self.sample_rate, self.normalize, self._hf = sample_rate, normalize, None
        folder = data_root(root) / "librispeech" / "LibriSpeech" / split
        if download and not folder.exists():
            self._hf = self._load_hf(split)
            return
        require(folder, f"LibriSpeech {split}",
                "Online: LibriSpeech(split, download=True) reads openslr/librispeech_asr with `datasets`.")
        self.items: list[tuple[Path, str]] = []
        for trans in sorted(folder.glob("*/*/*.trans.txt")):
            for line in trans.read_text().splitlines():
                utt, _, text = line.partition(" ")
                self.items.append((trans.parent / f"{utt}.flac", text))

    def __len__(self) -> int:
        return len(self._hf) if self._hf is not None else len(self.items)

    def __getitem__(self, i: int) -> dict:
        if self._hf is not None:
            row = self._hf[i]
            audio = row["audio"]
            source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio["path"]
            path, text = audio.get("path") or row["id"], row["text"]
        else:
            source, text = self.items[i]
            path = source
        wav = load_audio(source, self.sample_rate)
        return dict(source=normalize_audio(wav) if self.normalize else wav, transcript=text, path=str(path))

    @classmethod
    def _load_hf(cls, split: str):
        import datasets

        config, hf_split = cls.HF_SPLITS[split]
        ds = datasets.load_dataset("openslr/librispeech_asr", config, split=hf_split)
        return ds.cast_column("audio", datasets.Audio(decode=False))


class AudioCollator:
    """Batch variable-length waveforms like fairseq's `RawAudioDataset` with padding.

    Items longer than `max_samples` are cropped to a window of `max_samples` (random start, drawn
    from `generator` so that it is reproducible; centred when `random_crop=False`). Items shorter
    than `min_samples` are dropped (fairseq filters them out of its manifest). The rest are padded
    with zeros to the longest kept item.

    `__call__(items) -> dict(source=float [B, N], padding_mask=bool [B, N] (True = padding),
    label=long [B] if the items have a "label")`.
    """

    def __init__(self, max_samples: int, min_samples: int = 0, random_crop: bool = True,
                 generator: torch.Generator | None = None):
        self.max_samples, self.min_samples = max_samples, min_samples
        self.random_crop, self.generator = random_crop, generator

    def crop(self, wav: torch.Tensor) -> torch.Tensor:
        """`[N] -> [min(N, max_samples)]`."""
        excess = len(wav) - self.max_samples
        if excess <= 0:
            return wav
        if self.random_crop:
            start = int(torch.randint(0, excess + 1, (), generator=self.generator))
        else:
            start = excess // 2
        return wav[start:start + self.max_samples]

    def __call__(self, items: list[dict]) -> dict:
        items = [it for it in items if len(it["source"]) >= self.min_samples]
        waves = [self.crop(it["source"]) for it in items]
        size = max((len(w) for w in waves), default=0)
        source = torch.zeros(len(waves), size, dtype=torch.float32)
        padding_mask = torch.ones(len(waves), size, dtype=torch.bool)
        for row, wav in enumerate(waves):
            source[row, :len(wav)] = wav
            padding_mask[row, :len(wav)] = False
        batch = dict(source=source, padding_mask=padding_mask)
        if items and "label" in items[0]:
            batch["label"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        return batch
