"""Which data a preset pretrains on and is probed with, per modality.

    dataset, collate_fn = pretrain_data(cfg)            # unlabelled batches dict(source, padding_mask?)
    task = probe_data(cfg)                              # the labelled ProbeTask for `evaluate.probe`

| modality | pretraining (default)                       | probe (default)   | other pretraining sets           |
|----------|---------------------------------------------|-------------------|----------------------------------|
| speech   | FSDD train split, 16 kHz, crops of cfg.crop | fsdd_digits       | speech_commands, librispeech     |
| image    | Fashion-MNIST train, cfg.encoder.image_size | fashion_mnist     | cifar10, fashion_mnist+cifar10   |
| text     | tiny-shakespeare train, blocks of cfg.crop  | sentence_polarity | wikitext-2, wikitext-103,        |
|          |                                             |                   | sentence_polarity, subjectivity  |

Besides these names, `dataset` takes the paper's data (`data/local.py`): an ImageNet-style folder, a fairseq
manifest (.tsv) or LibriSpeech folders, local .txt files or `hf:<name>[:<config>]` (Hugging Face, streamed).
The `small` presets (the GPU profile) pretrain on larger sets than the tiny ones: `SMALL_DATASETS`.

Text: an encoder with RoBERTa's 50,265-token table reads GPT-2's BPE; any other `vocab_size` (the tiny
preset's 2,048) gets a byte-level BPE of exactly that size trained on the pretraining corpus (cached).
Pretraining only sees the train split of its data set; the probes use their own held-out test split.
"sentence_polarity" / "subjectivity" as *pretraining* sets are the unlabelled sentences of the probe
task's train split (in-domain text, one sentence per item): the test sentences are never seen.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from torch.utils.data import ConcatDataset, Dataset, Subset, default_collate

from .config import Data2VecConfig

DATASETS = {
    "speech": ("fsdd", "speech_commands", "librispeech"),
    "image": ("fashion_mnist", "cifar10", "fashion_mnist+cifar10"),
    "text": ("tinyshakespeare", "wikitext-2", "wikitext-103", "sentence_polarity", "subjectivity", "movie_sentences"),
}
# the probe tasks' train sentences, labels dropped; "movie_sentences" = both tasks' train sentences
SENTENCE_SETS = ("sentence_polarity", "subjectivity", "movie_sentences")
# the GPU profile's pretraining data, big enough for its steps (tests/test_profiles.py checks the epochs)
SMALL_DATASETS = {"speech": "librispeech", "image": "fashion_mnist", "text": "wikitext-103"}
# their items: LibriSpeech train-clean-100 utterances (openslr.org/12), Fashion-MNIST train images, and WikiText-103
# train in blocks of 256 GPT-2 tokens (estimate: 103M words x ~1.1 BPE tokens per word / 254 tokens per block)
SMALL_DATASET_ITEMS = {"librispeech": 28_539, "fashion_mnist": 60_000, "wikitext-103": 450_000}
DEFAULT_PROBE = {"speech": "fsdd_digits", "image": "fashion_mnist", "text": "sentence_polarity"}
GPT2_VOCAB = 50_265


def default_dataset(modality: str, preset: str | None = None) -> str:
    """The pretraining data set of a modality (the first of DATASETS[modality]); for the `small`
    preset SMALL_DATASETS[modality]."""
    _check_modality(modality)
    return SMALL_DATASETS[modality] if preset == "small" else DATASETS[modality][0]


def default_probe(modality: str) -> str:
    """The probe task of a modality: fsdd_digits / fashion_mnist / sentence_polarity."""
    _check_modality(modality)
    return DEFAULT_PROBE[modality]


def _check_modality(modality: str) -> None:
    if modality not in DATASETS:
        raise ValueError(f"unknown modality {modality!r}: expected one of {sorted(DATASETS)}")


class SourceOnly:
    """Wrap a collate_fn and keep only what pretraining reads: dict(source, padding_mask if present)."""

    def __init__(self, collate_fn: Callable):
        self.collate_fn = collate_fn

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collate_fn(items)
        return {k: batch[k] for k in ("source", "padding_mask") if k in batch}


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` items (deterministic), or the data set itself."""
    return dataset if limit is None or limit >= len(dataset) else Subset(dataset, range(limit))


# ---------------------------------------------------------------------------------------- tokenizer
def tokenizer_for(cfg: Data2VecConfig, dataset: str | None = None, *, root: str | Path | None = None):
    """The tokenizer of a text config: GPT-2's BPE for a 50,265-token table, else a BPE of exactly
    cfg.encoder.vocab_size tokens trained on the train split of `dataset` (default tiny-shakespeare).
    Raises ValueError if its ids (vocabulary size, <mask>, <pad>, <s>, </s>) do not match cfg.encoder."""
    from .data import Tokenizer, read_corpus

    enc = cfg.encoder
    if cfg.modality != "text":
        raise ValueError(f"only text configs have a tokenizer, got modality {cfg.modality!r}")
    if enc.vocab_size == GPT2_VOCAB:
        tok = Tokenizer.gpt2(root)
    else:
        name = dataset or default_dataset("text", cfg.name)
        key = name
        if name in SENTENCE_SETS:
            text = "\n".join(_train_sentences(name, root))
        elif name in DATASETS["text"]:
            text = read_corpus(name, "train", root)
        else:  # local files or hf:<name>: train on (the first 50 MB of) their text, cached by its hash
            text = _local_text(name, max_chars=50_000_000)
            key = "local-" + hashlib.sha256(text.encode()).hexdigest()[:12]
        tok = Tokenizer.train(text, enc.vocab_size, name=f"{key}-train")
        if tok.vocab_size < enc.vocab_size:
            raise ValueError(f"the {name} train split yields a BPE of only {tok.vocab_size} tokens, fewer than "
                             f"cfg.encoder.vocab_size = {enc.vocab_size}: the corpus is too small (or damaged) for "
                             f"this vocabulary; use a larger corpus, or set vocab_size (and mask_idx = vocab_size - 1) "
                             f"to at most {tok.vocab_size}")
    check_tokenizer(tok, cfg)
    return tok


def check_tokenizer(tok, cfg: Data2VecConfig) -> None:
    """Raise ValueError unless the tokenizer's ids are the ones the text encoder was built for."""
    enc = cfg.encoder
    pairs = {"vocab_size": (tok.vocab_size, enc.vocab_size), "<mask> id": (tok.mask_id, enc.mask_idx),
             "<pad> id": (tok.pad_id, enc.pad_idx), "<s> id": (tok.bos_id, enc.bos_idx),
             "</s> id": (tok.eos_id, enc.eos_idx)}
    bad = [f"{k}: tokenizer {a} vs cfg.encoder {b}" for k, (a, b) in pairs.items() if a != b]
    if bad:
        raise ValueError(f"tokenizer {tok!r} does not match the text encoder config ({'; '.join(bad)}). "
                         f"The tokenizer puts <mask> at vocab_size - 1: set cfg.encoder.vocab_size and "
                         f"cfg.encoder.mask_idx = vocab_size - 1 accordingly.")


# ------------------------------------------------------------------------------------- pretraining
def pretrain_data(cfg: Data2VecConfig, dataset: str | None = None, *, root: str | Path | None = None,
                  limit: int | None = None) -> tuple[Dataset, Callable]:
    """The unlabelled pretraining set of a config and its collate_fn.

    Batches: speech dict(source=float [B, N]) cropped to the batch's shortest clip, N <= cfg.crop samples,
    clips under cfg.min_crop dropped or chained (cfg.short_clips); with cfg.pad_batches padded to the
    longest clip instead, plus padding_mask=bool [B, N];
    image dict(source=float [B, C, S, S]) augmented by `pretrain_transform`, S = cfg.encoder.image_size;
    text dict(source=long [B, L], padding_mask=bool [B, L]) of blocks of L = cfg.crop tokens.
    `limit` keeps the first `limit` items (examples, images or blocks)."""
    from . import data

    name = dataset or default_dataset(cfg.modality, cfg.name)
    if name not in DATASETS[cfg.modality]:
        return _local_data(cfg, name, root=root, limit=limit)
    enc = cfg.encoder

    if cfg.modality == "speech":
        ds = {"fsdd": lambda: data.FSDD("train", root=root, sample_rate=enc.sample_rate),
              "speech_commands": lambda: data.SpeechCommands("train", root=root, sample_rate=enc.sample_rate),
              "librispeech": lambda: data.LibriSpeech("test-clean" if _mirror_only(root) and cfg.name != "small"
                                                      else "train-clean-100",
                                                      root=root, sample_rate=enc.sample_rate)}[name]()
        collate = speech_collate(cfg)
        ds = _limit(ds, limit)
        if cfg.short_clips == "chain":
            ds = data.ChainedClips(ds, collate.min_samples)
        return ds, SourceOnly(collate)

    if cfg.modality == "image":
        transform = data.pretrain_transform(enc.image_size, channels=enc.in_chans)
        classes = {"fashion_mnist": data.FashionMNIST, "cifar10": data.CIFAR10}
        parts = [classes[n]("train", root=root, transform=transform, limit=limit) for n in name.split("+")]
        # "fashion_mnist+cifar10": both train splits, unlabelled, every image at the encoder's size / channels
        return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), SourceOnly(default_collate)

    tok = tokenizer_for(cfg, name, root=root)
    block = cfg.crop or 512
    max_tokens = enc.max_positions - enc.pad_idx - 1
    if block > max_tokens:
        raise ValueError(f"cfg.crop = {block} tokens per block, but the encoder has only {max_tokens} positions")
    if name in SENTENCE_SETS:  # one sentence per item, <s> ... </s>, padded per batch
        from .data.probe import Sentences
        texts = _train_sentences(name, root)
        items = Sentences(texts, [0] * len(texts), tok, block)
    else:
        items = data.text_blocks(name, "train", tok, block, root=root)
    return _limit(items, limit), SourceOnly(data.TextCollator(tok.pad_id))


def speech_collate(cfg: Data2VecConfig, generator=None):
    """The speech pretraining collate of a config (fairseq RawAudioDataset): clips under
    max(cfg.min_crop, one frame) samples dropped; each batch cropped to its shortest clip and at most
    cfg.crop samples (or padded to its longest with cfg.pad_batches)."""
    from .data import AudioCollator

    enc = cfg.encoder
    min_samples = 1  # the shortest input that gives one frame (ConvFeatureEncoder.min_samples)
    for _, k, s in reversed(enc.conv_layers):
        min_samples = (min_samples - 1) * s + k
    min_samples = max(min_samples, cfg.min_crop)
    crop = cfg.crop or 15 * enc.sample_rate
    if min_samples > crop:
        raise ValueError(f"cfg.min_crop = {cfg.min_crop} samples is longer than cfg.crop = {crop}")
    return AudioCollator(max_samples=crop, min_samples=min_samples, pad=cfg.pad_batches, generator=generator)


def _local_data(cfg: Data2VecConfig, name: str, *, root=None, limit: int | None = None) -> tuple[Dataset, Callable]:
    """`pretrain_data` for a `--dataset` that is a path or hf:<name> (see data/local.py)."""
    from . import data
    from .data import local

    try:
        kind, where = local.classify(cfg.modality, name)
    except ValueError as e:
        raise ValueError(f"unknown {cfg.modality} pretraining data set {name!r}: expected one of "
                         f"{DATASETS[cfg.modality]} or a path. {e}") from None
    enc = cfg.encoder
    if kind == "image_folder":
        transform = data.pretrain_transform(enc.image_size, channels=enc.in_chans)
        return data.ImageFolderDataset(where, transform=transform, limit=limit), SourceOnly(default_collate)
    if kind in ("manifest", "audio_folders"):
        ds = (local.AudioManifest(where, sample_rate=enc.sample_rate) if kind == "manifest"
              else local.AudioFolder(where, sample_rate=enc.sample_rate))
        collate = speech_collate(cfg)
        ds = _limit(ds, limit)
        if cfg.short_clips == "chain":
            ds = data.ChainedClips(ds, collate.min_samples)
        return ds, SourceOnly(collate)
    tok = tokenizer_for(cfg, name, root=root)
    block = cfg.crop or 512
    if block > enc.max_positions - enc.pad_idx - 1:
        raise ValueError(f"cfg.crop = {block} tokens per block, but the encoder has only "
                         f"{enc.max_positions - enc.pad_idx - 1} positions")
    if kind == "hf":  # streamed: only the first `limit` blocks are read (all of it without a limit)
        blocks = local.pack_blocks(local.hf_rows(*where), tok, block, max_blocks=limit)
    else:
        blocks = _limit(local.pack_blocks([local.local_text(where)], tok, block), limit)
    return blocks, SourceOnly(data.TextCollator(tok.pad_id))


def _local_text(name: str, max_chars: int) -> str:
    """The text of local .txt files or the first `max_chars` characters of hf:<name> (tokenizer training)."""
    from .data import local

    kind, where = local.classify("text", name)
    if kind == "text_files":
        return local.local_text(where)[:max_chars]
    out, n = [], 0
    for row in local.hf_rows(*where):
        out.append(row)
        n += len(row)
        if n >= max_chars:
            break
    return "".join(out)


def _train_sentences(task: str, root) -> list[str]:
    """The sentences of a sentence task's train split (the probe's split), without their labels;
    "movie_sentences": those of sentence_polarity and of subjectivity, interleaved."""
    from .data.probe import read_sentences, stratified_split

    if task == "movie_sentences":
        a, b = _train_sentences("sentence_polarity", root), _train_sentences("subjectivity", root)
        return [s for pair in zip(a, b) for s in pair] + a[len(b):] + b[len(a):]

    texts, labels = read_sentences(task, root)
    return [texts[i] for i in stratified_split(labels)[0]]


def _mirror_only(root) -> bool:
    """True when only the mirror's 4-utterance LibriSpeech test-clean is available."""
    from .data import data_root

    base = data_root(root) / "librispeech" / "LibriSpeech"
    return (base / "test-clean").exists() and not (base / "train-clean-100").exists()


def run_info(cfg: Data2VecConfig, dataset: str | None = None, *, root: str | Path | None = None,
             with_tokenizer: bool = False) -> dict:
    """What a run's pipeline.json (and, with `with_tokenizer`, every checkpoint) records so that `probe`
    can rebuild the same pipeline: modality, preset, pretraining data set and (text) the tokenizer's
    fingerprint; `with_tokenizer` adds the trained tokenizer itself ("tokenizer_json", a few hundred kB)."""
    name = dataset or default_dataset(cfg.modality, cfg.name)
    info = dict(modality=cfg.modality, preset=cfg.name, dataset=name)
    if cfg.modality == "text":
        tok = tokenizer_for(cfg, name, root=root)
        info["tokenizer"] = tok.fingerprint
        if with_tokenizer and tok.offset == 0:  # a trained BPE (GPT-2's is rebuilt from its files and checked)
            info["tokenizer_json"] = tok.to_str()
    return info


def run_tokenizer(cfg: Data2VecConfig, info: dict, *, root: str | Path | None = None):
    """The tokenizer a text run was pretrained with: the one stored in its checkpoint (`info` = the
    checkpoint's "pipeline", see run_info), else rebuilt for info["dataset"]; either way checked against
    the recorded fingerprint. Raises CheckpointError on a mismatch."""
    from .data import Tokenizer
    from .errors import CheckpointError

    want = info.get("tokenizer")
    if info.get("tokenizer_json"):
        tok = Tokenizer.from_str(info["tokenizer_json"], name=want.rsplit("-", 1)[0] if want else "stored")
    else:
        tok = tokenizer_for(cfg, info.get("dataset"), root=root)
    if want and tok.fingerprint != want:
        raise CheckpointError(f"the tokenizer {'stored' if info.get('tokenizer_json') else 'rebuilt'} for "
                              f"{info.get('dataset')} ({tok.fingerprint}) is not the one the checkpoint was "
                              f"pretrained with ({want})")
    check_tokenizer(tok, cfg)
    return tok


# ------------------------------------------------------------------------------------------- probes
def probe_data(cfg: Data2VecConfig, task: str | None = None, *, dataset: str | None = None,
               root: str | Path | None = None, limit_train: int | None = None,
               limit_test: int | None = None, tokenizer=None):
    """The labelled `ProbeTask` for an encoder of `cfg` (default: `default_probe(cfg.modality)`),
    with images at the encoder's size / channels and text in the encoder's tokenizer (`dataset` names
    the pretraining corpus the tiny tokenizer was trained on; `tokenizer`: that tokenizer, when known)."""
    from .data import probe_task
    from .data.probe import PROBE_TASKS

    name = task or default_probe(cfg.modality)
    if name not in PROBE_TASKS:
        raise ValueError(f"unknown probe task {name!r}; choose from {PROBE_TASKS}")
    modality = "speech" if name.startswith("fsdd") else "image" if name in ("fashion_mnist", "cifar10") else "text"
    if modality != cfg.modality:
        raise ValueError(f"probe task {name!r} is {modality}, but the encoder is {cfg.modality}")
    kw = dict(root=root, limit_train=limit_train, limit_test=limit_test)
    if cfg.modality == "image":
        kw.update(image_size=cfg.encoder.image_size, channels=cfg.encoder.in_chans)
    if cfg.modality == "text":
        enc = cfg.encoder
        kw.update(tokenizer=tokenizer or tokenizer_for(cfg, dataset, root=root),
                  max_tokens=min(cfg.crop or 512, enc.max_positions - enc.pad_idx - 1))
    return probe_task(name, **kw)
