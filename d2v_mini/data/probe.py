"""Labelled tasks for linear probes: a frozen encoder's features -> a linear classifier.

`probe_task(name, ...)` returns a `ProbeTask` with a train and a test data set of dict items
(source, label), the number of classes, the modality and the `collate_fn` that batches them:

| name                | modality | classes | split                                   | items      |
|---------------------|----------|---------|-----------------------------------------|------------|
| `fsdd_digits`       | speech   | 10      | official: takes 5-49 / takes 0-4        | 2700 / 300 |
| `fsdd_speakers`     | speech   | 6       | the same split (every speaker in both)  | 2700 / 300 |
| `fashion_mnist`     | image    | 10      | official                                | 60k / 10k  |
| `cifar10`           | image    | 10      | official                                | 50k / 10k  |
| `sentence_polarity` | text     | 2       | stratified 80/20, seed 0 (1 = positive) | 8530 / 2132 |
| `subjectivity`      | text     | 2       | stratified 80/20, seed 0 (1 = subjective) | 8000 / 2000 |

Image and text sizes follow the encoder: `image_size` / `channels` (default: the native 28 x 1 or
32 x 3) and `tokenizer` / `max_tokens` (default: GPT-2 BPE, 64 tokens including `<s>` and `</s>`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset, Subset, default_collate

from .download import ensure
from .image import CIFAR10, FashionMNIST, eval_transform
from .speech import FSDD, AudioCollator
from .text import TextCollator, Tokenizer

PROBE_TASKS = ("fsdd_digits", "fsdd_speakers", "fashion_mnist", "cifar10", "sentence_polarity", "subjectivity")
SENTENCE_FILES = {  # task -> (folder, file of label 0, file of label 1)
    "sentence_polarity": ("sentence_polarity", "rt-polarity.neg", "rt-polarity.pos"),
    "subjectivity": ("subjectivity", "plot.tok.gt9.5000", "quote.tok.gt9.5000"),
}


@dataclass
class ProbeTask:
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    modality: str  # "speech" | "image" | "text"
    collate_fn: Callable  # list of items -> dict(source=[B, ...], label=long [B], padding_mask=... if padded)


class Relabel(Dataset):
    """Use another field of the items as the label (e.g. FSDD's "speaker")."""

    def __init__(self, dataset: Dataset, key: str):
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        return {**item, "label": item[self.key]}


class Sentences(Dataset):
    """Tokenized sentences: item dict(source=long [T] = `<s> ... </s>` with T <= max_tokens, label=int)."""

    def __init__(self, texts: list[str], labels: list[int], tokenizer: Tokenizer, max_tokens: int):
        body = [ids[:max_tokens - 2] for ids in tokenizer.encode_batch(texts)]
        self.ids = [torch.tensor([tokenizer.bos_id, *ids, tokenizer.eos_id]) for ids in body]
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return dict(source=self.ids[i], label=self.labels[i])


def read_sentences(task: str, root: str | Path | None = None,
                   download: bool | None = None) -> tuple[list[str], list[int]]:
    """All sentences of a two-file task and their labels (file order: all of label 0, then label 1).

    The originals are Latin-1; the mirror's copies were converted to UTF-8. Both are accepted.
    """
    folder, *files = SENTENCE_FILES[task]
    path = ensure(f"text/{folder}", root, download)  # downloaded if missing, unless D2V_DOWNLOAD=never
    texts, labels = [], []
    for label, file in enumerate(files):
        raw = (path / file).read_bytes()
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            lines = raw.decode("latin-1").splitlines()
        lines = [line.strip() for line in lines if line.strip()]
        texts += lines
        labels += [label] * len(lines)
    return texts, labels


def stratified_split(labels: list[int], train_frac: float = 0.8, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of a deterministic split keeping each class's share: `train_frac` of every class goes to
    train. Both index lists are shuffled with the same seeded generator (so a prefix is balanced too)."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in sorted(set(labels)):
        idx = torch.tensor([i for i, y in enumerate(labels) if y == c])
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        cut = round(train_frac * len(idx))
        train += idx[:cut]
        test += idx[cut:]
    shuffle = lambda xs: [xs[i] for i in torch.randperm(len(xs), generator=g).tolist()]  # noqa: E731
    return shuffle(train), shuffle(test)


def _limit(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A deterministic random subset of n items (kept in the original order), or the data set itself."""
    if n is None or n >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(len(dataset), generator=g)[:n].tolist()))


def probe_task(name: str, *, root: str | Path | None = None, limit_train: int | None = None,
               limit_test: int | None = None, image_size: int | None = None, channels: int | None = None,
               tokenizer: Tokenizer | None = None, max_tokens: int | None = None,
               download: bool | None = None) -> ProbeTask:
    """Build the labelled probe task `name` (one of `PROBE_TASKS`); see the module docstring."""
    if name in ("fsdd_digits", "fsdd_speakers"):
        train, test = (FSDD(split, root=root, download=download) for split in ("train", "test"))
        num_classes = 10 if name == "fsdd_digits" else len(train.speakers)
        if name == "fsdd_speakers":
            train, test = Relabel(train, "speaker"), Relabel(test, "speaker")
        collate = AudioCollator(max_samples=3 * 16_000, random_crop=False)  # FSDD clips are <= 2.3 s
        return ProbeTask(name, _limit(train, limit_train), _limit(test, limit_test), num_classes, "speech", collate)

    if name in ("fashion_mnist", "cifar10"):
        native_size, native_channels, cls = (28, 1, FashionMNIST) if name == "fashion_mnist" else (32, 3, CIFAR10)
        transform = eval_transform(image_size or native_size, channels or native_channels)
        train = cls("train", root=root, transform=transform, limit=limit_train, download=download)
        test = cls("test", root=root, transform=transform, limit=limit_test, download=download)
        return ProbeTask(name, train, test, 10, "image", default_collate)

    if name in SENTENCE_FILES:
        tokenizer = tokenizer or Tokenizer.gpt2(root, download=download)
        texts, labels = read_sentences(name, root, download)
        parts = []
        for idx, limit in zip(stratified_split(labels), (limit_train, limit_test)):
            idx = idx[:limit]
            parts.append(Sentences([texts[i] for i in idx], [labels[i] for i in idx], tokenizer, max_tokens or 64))
        return ProbeTask(name, parts[0], parts[1], 2, "text", TextCollator(tokenizer.pad_id))

    raise ValueError(f"unknown probe task {name!r}; choose from {PROBE_TASKS}")
