"""Speech data: read waveforms, normalise them, and batch them the way fairseq's wav2vec 2.0 does.

Every item is a dict with `source`: a float32 waveform `[N]` at 16 kHz, zero mean and unit variance
per utterance (fairseq `normalize: true`, which data2vec speech uses). `AudioCollator` turns a list of
items into `source: [B, N]` plus `padding_mask: [B, N]` (True = padding).

Audio is read with `soundfile` only (WAV, FLAC): `torchaudio.load` and `datasets`' audio decoding go
through TorchCodec, which is not available everywhere.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from einops import reduce
from torch.utils.data import Dataset

from ..errors import DataFileError
from . import data_root
from .download import download_allowed, ensure, hub_download, mirror_url


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


def audio_size(path: str | Path | BinaryIO, sample_rate: int | None = 16_000) -> int:
    """Samples `load_audio(path, sample_rate)` returns, from the file header (nothing decoded):
    ceil(frames x sample_rate / file rate), the length torchaudio's resampling gives. A header that
    cannot be read raises DataFileError naming the file."""
    try:
        info = sf.info(path)
    except (RuntimeError, OSError, ValueError, EOFError) as e:  # soundfile.LibsndfileError is a RuntimeError
        if isinstance(e, FileNotFoundError):
            raise
        name = path if isinstance(path, (str, Path)) else getattr(path, "name", "an in-memory audio file")
        raise DataFileError(f"cannot read the header of audio file {name} ({str(e).strip() or type(e).__name__}): "
                            f"the file is corrupted or not WAV/FLAC; replace it") from None
    if sample_rate is None or info.samplerate == sample_rate:
        return int(info.frames)
    return -(-info.frames * sample_rate // info.samplerate)


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

    @property
    def sizes(self) -> list[int]:
        """Samples of every item at `sample_rate`, read from the file headers once: [N] ints."""
        if getattr(self, "_sizes", None) is None:
            self._sizes = [audio_size(p, self.sample_rate) for p in self.paths]
        return self._sizes

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
                 normalize: bool = True, download: bool | None = None):
        if split not in ("train", "test", "all"):
            raise ValueError(f"FSDD split must be 'train', 'test' or 'all', not {split!r}")
        folder = ensure("fsdd/recordings", root, download)  # download: None = unless D2V_DOWNLOAD=never
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

class SpeechCommands(_AudioFiles):
    """Speech Commands v0.01 keyword clips, `{word}/{speaker}_nohash_{n}.wav` at 16 kHz (~1 s).

    Default: the 300-clip subset `speech_commands_mini/` (30 words x 10 clips, listed in
    `manifests/speech_commands_mini.txt`; downloaded from a mirror, or cut out of the v0.01 tarball, which
    is streamed once and not kept); `full=True` reads the full v0.01 set from `speech_commands/` (1.4 GB).
    Split as in the original: `testing_list.txt` -> "test", `validation_list.txt` -> "validation",
    the rest -> "train". Item: dict(source=float [N], label=int index into `self.classes`, path=str).
    """

    URL = "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz"
    SHA256 = "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d"

    def __init__(self, split: str = "train", root: str | Path | None = None, sample_rate: int = 16_000,
                 normalize: bool = True, full: bool = False, download: bool | None = None):
        if split not in ("train", "validation", "test"):
            raise ValueError(f"SpeechCommands split must be 'train', 'validation' or 'test', not {split!r}")
        folder = ensure("speech_commands" if full else "speech_commands_mini", root, download)
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

    Reads the folder layout under `<root>/librispeech/` (the mirror holds 4 test-clean utterances). A
    missing split is downloaded (unless D2V_DOWNLOAD=never / download=False): from D2V_MIRROR_URL when set,
    else read from the Hugging Face hub (`openslr/librispeech_asr` through `datasets`, kept in its cache;
    audio decoding off, bytes decoded with soundfile).
    Item: dict(source=float [N] at 16 kHz, transcript=str (upper case), path=str).
    """

    HF_SPLITS = {"test-clean": ("clean", "test"), "dev-clean": ("clean", "validation"),
                 "train-clean-100": ("clean", "train.100"), "train-clean-360": ("clean", "train.360"),
                 "test-other": ("other", "test"), "dev-other": ("other", "validation"),
                 "train-other-500": ("other", "train.500")}

    def __init__(self, split: str = "test-clean", root: str | Path | None = None, sample_rate: int = 16_000,
                 normalize: bool = True, download: bool | None = None):
        self.sample_rate, self.normalize, self._hf = sample_rate, normalize, None
        folder = data_root(root) / "librispeech" / "LibriSpeech" / split
        if not folder.exists() and download_allowed(download) and not mirror_url():
            self._hf = hub_download(f"LibriSpeech {split}", folder, lambda: self._load_hf(split), root)
            return
        folder = ensure(f"librispeech/LibriSpeech/{split}", root, download)
        self.items: list[tuple[Path, str]] = []
        for trans in sorted(folder.glob("*/*/*.trans.txt")):
            for line in trans.read_text().splitlines():
                utt, _, text = line.partition(" ")
                self.items.append((trans.parent / f"{utt}.flac", text))

    def __len__(self) -> int:
        return len(self._hf) if self._hf is not None else len(self.items)

    @property
    def sizes(self) -> list[int]:
        """Samples of every item at `sample_rate`, from the file headers (read once): [N] ints."""
        if getattr(self, "_sizes", None) is None:
            if self._hf is not None:
                audio = (row["audio"] for row in self._hf)  # row by row: the column holds the audio bytes
                self._sizes = [audio_size(io.BytesIO(a["bytes"]) if a.get("bytes") else a["path"], self.sample_rate)
                               for a in audio]
            else:
                self._sizes = [audio_size(path, self.sample_rate) for path, _ in self.items]
        return self._sizes

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
    """Batch variable-length waveforms like fairseq's `RawAudioDataset`.

    Items shorter than `min_samples` are dropped (fairseq filters them out of its manifest:
    `min_sample_size`, 32,000 samples = 2 s in the speech recipe). Then, with
      - `pad=False` (fairseq pretraining): every item is cropped to the batch's target length
        min(shortest item, `max_samples`), a window with a random start (drawn from `generator`;
        centred when `random_crop=False`). No padding, no `padding_mask`: every frame is real, so
        `require_same_masks` keeps the recipe's masked share (~49% of the frames, about 0.43 after
        the same-count cut on 2-20 s clips, against ~0.23 for padded batches of the same clips).
      - `pad=True` (evaluation, fine-tuning, or as an option): items longer than `max_samples` are
        cropped to `max_samples`; the rest are padded with zeros to the longest kept item and
        `padding_mask` marks the padding.

    `__call__(items) -> dict(source=float [B, N], padding_mask=bool [B, N] (True = padding; pad=True
    only), label=long [B] if the items have a "label")`.
    """

    def __init__(self, max_samples: int, min_samples: int = 0, random_crop: bool = True,
                 generator: torch.Generator | None = None, pad: bool = True):
        self.max_samples, self.min_samples = max_samples, min_samples
        self.random_crop, self.generator, self.pad = random_crop, generator, pad

    def crop(self, wav: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """`[N] -> [min(N, size)]` (size: default `max_samples`)."""
        size = self.max_samples if size is None else size
        excess = len(wav) - size
        if excess <= 0:
            return wav
        if self.random_crop:
            start = int(torch.randint(0, excess + 1, (), generator=self.generator))
        else:
            start = excess // 2
        return wav[start:start + size]

    def __call__(self, items: list[dict]) -> dict:
        items = [it for it in items if len(it["source"]) >= self.min_samples]
        if self.pad:
            waves = [self.crop(it["source"]) for it in items]
            size = max((len(w) for w in waves), default=0)
        else:
            size = min([len(it["source"]) for it in items] + [self.max_samples]) if items else 0
            waves = [self.crop(it["source"], size) for it in items]
        source = torch.zeros(len(waves), size, dtype=torch.float32)
        padding_mask = torch.ones(len(waves), size, dtype=torch.bool)
        for row, wav in enumerate(waves):
            source[row, :len(wav)] = wav
            padding_mask[row, :len(wav)] = False
        batch = dict(source=source, padding_mask=padding_mask) if self.pad else dict(source=source)
        if items and "label" in items[0]:
            batch["label"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        return batch


class ChainedClips(Dataset):
    """Utterances made of short clips played one after another: item i = clip i followed by clips drawn
    at random from the data set until the utterance holds at least `min_samples` samples (at most
    `max_clips` clips). Each clip keeps its own normalisation; nothing is inserted between clips (FSDD
    clips start and end with their own silence).

    Why: speech pretraining expects utterances of 2-20 s (hundreds of frames). Clips of 20-40 frames
    are shorter than the positional convolution's receptive field, so every frame "sees" both edges of
    its clip and the relative position becomes an easy target (see notebook 04). Chained clips give
    the recipe's long utterances from a corpus of short words. The random partners come from the global
    torch RNG (seeded and checkpointed by the trainer). Item: dict(source=float [N], clips=int).
    """

    def __init__(self, dataset: Dataset, min_samples: int, max_clips: int = 16):
        if min_samples < 1 or max_clips < 1:
            raise ValueError(f"need min_samples >= 1 and max_clips >= 1, got {min_samples} and {max_clips}")
        self.dataset, self.min_samples, self.max_clips = dataset, min_samples, max_clips

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def sizes(self) -> list[int]:
        """The most samples each item can hold, [N] ints, from the clips' sizes (their file headers): a clip
        of >= min_samples stays alone; a shorter one grows to under min_samples + the longest clip (and at
        most max_clips clips). An upper bound, so that token batches (batching.TokenBatchSampler, which
        sizes batches by their longest item) never exceed their budget once the collator crops them."""
        from ..batching import dataset_sizes

        base = dataset_sizes(self.dataset)
        longest = int(base.max()) if len(base) else 0
        return [int(n) if n >= self.min_samples else
                min(int(n) + (self.max_clips - 1) * longest, self.min_samples - 1 + longest) for n in base]

    def __getitem__(self, i: int) -> dict:
        parts = [self.dataset[i]["source"]]
        while sum(len(p) for p in parts) < self.min_samples and len(parts) < self.max_clips:
            parts.append(self.dataset[int(torch.randint(len(self.dataset), ()))]["source"])
        return dict(source=torch.cat(parts), clips=len(parts))
