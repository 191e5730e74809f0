"""Data pipelines, offline, against the data mirror (`D2V_DATA`; default: ../shared/data next to the repo).

Derived files go to a fresh cache (`D2V_CACHE`) per test session, so the unpacking / gunzipping /
training paths run every time.
"""
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module", autouse=True)
def data_env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    if "D2V_DATA" not in os.environ and MIRROR.exists():
        mp.setenv("D2V_DATA", str(MIRROR))
    mp.setenv("D2V_CACHE", str(tmp_path_factory.mktemp("d2v_cache")))
    yield
    mp.undo()


from d2v_mini.data import (  # noqa: E402
    CIFAR10, FSDD, AudioCollator, DatasetNotFoundError, FashionMNIST, ImageFolderDataset, LibriSpeech,
    SpeechCommands, TextCollator, Tokenizer, TokenBlocks, cache_dir, data_root, eval_transform, load_audio,
    pretrain_transform, probe_task, read_corpus, text_blocks,
)
from d2v_mini.data import download_file  # noqa: E402
from d2v_mini.data import text as text_module  # noqa: E402
from d2v_mini.data.probe import read_sentences, stratified_split  # noqa: E402


# ------------------------------------------------------------------------------------------- speech
def test_fsdd_official_split():
    test, train = FSDD("test"), FSDD("train")
    assert len(test) == 6 * 10 * 5 == 300 and len(train) == 6 * 10 * 45 == 2700
    assert len(FSDD("all")) == 3000
    takes = lambda ds: {int(Path(p).stem.split("_")[2]) for p in ds.paths}  # noqa: E731
    assert takes(test) == set(range(5)) and takes(train) == set(range(5, 50))
    assert test.speakers == sorted(test.speakers) and len(test.speakers) == 6
    assert Counter(test.labels) == {d: 30 for d in range(10)}
    item = test[7]
    name = Path(item["path"]).stem.split("_")
    assert item["label"] == int(name[0]) and test.speakers[item["speaker"]] == name[1]


def test_fsdd_resampled_and_normalized():
    item = FSDD("test")[0]
    info = sf.info(item["path"])
    assert info.samplerate == 8000
    wav = item["source"]
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert abs(len(wav) - 2 * info.frames) <= 2  # 8 kHz -> 16 kHz
    assert abs(wav.mean().item()) < 1e-4 and abs(wav.std().item() - 1) < 1e-2
    raw = FSDD("test", sample_rate=8000, normalize=False)[0]["source"]
    np.testing.assert_allclose(raw.numpy(), sf.read(item["path"], dtype="float32")[0], atol=1e-6)


def test_load_audio_downmixes_and_resamples(tmp_path):
    stereo = np.stack([np.linspace(-0.5, 0.5, 800), np.zeros(800)], axis=1).astype(np.float32)  # [N, 2]
    sf.write(tmp_path / "stereo.wav", stereo, 8000, subtype="FLOAT")
    mono = load_audio(tmp_path / "stereo.wav", sample_rate=None)
    np.testing.assert_allclose(mono.numpy(), stereo.mean(axis=1), atol=1e-6)
    assert load_audio(tmp_path / "stereo.wav").shape == (1600,)


def test_audio_collator_pads_with_mask_on_the_tail():
    lengths = [100, 50, 75]
    items = [dict(source=torch.randn(n) + 5, label=i) for i, n in enumerate(lengths)]
    batch = AudioCollator(max_samples=1000)(items)
    assert batch["source"].shape == batch["padding_mask"].shape == (3, 100)
    expected_mask = torch.arange(100)[None, :] >= torch.tensor(lengths)[:, None]
    assert torch.equal(batch["padding_mask"], expected_mask)
    assert (batch["source"][expected_mask] == 0).all() and (batch["source"][~expected_mask] != 0).all()
    for row, it in enumerate(items):
        assert torch.equal(batch["source"][row, :lengths[row]], it["source"])
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [0, 1, 2]


def test_audio_collator_crops_reproducibly():
    items = [dict(source=torch.arange(n, dtype=torch.float32)) for n in (5000, 3000, 1500, 300)]
    collate = lambda seed, **kw: AudioCollator(2000, generator=torch.Generator().manual_seed(seed), **kw)(items)  # noqa: E731
    a, b, c = collate(0), collate(0), collate(1)
    assert a["source"].shape == (4, 2000) and "label" not in a
    assert torch.equal(a["source"], b["source"]) and not torch.equal(a["source"], c["source"])
    for row in a["source"][:2]:  # crops are contiguous windows of the original
        assert torch.equal(row, torch.arange(2000) + row[0])
    assert a["padding_mask"][:2].sum() == 0 and a["padding_mask"][2].sum() == 500
    centre = collate(0, random_crop=False)["source"]
    assert centre[0, 0] == 1500 and centre[1, 0] == 500
    assert collate(0, min_samples=1000)["source"].shape == (3, 2000)  # the 300-sample item is dropped


def test_speech_commands_and_librispeech():
    splits = {s: SpeechCommands(s) for s in ("train", "validation", "test")}
    assert sum(len(d) for d in splits.values()) == 300 and len(splits["train"].classes) == 30
    paths = [set(d.paths) for d in splits.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    item = splits["test"][0]
    assert splits["test"].classes[item["label"]] == Path(item["path"]).parent.name
    assert 8000 < len(item["source"]) <= 16000
    libri = LibriSpeech("test-clean")
    assert len(libri) == 4
    item = libri[0]
    assert item["transcript"].startswith("HE HOPED THERE WOULD BE STEW")
    assert item["path"].endswith("1089-134686-0000.flac")
    assert len(item["source"]) == sf.info(item["path"]).frames  # already 16 kHz


# -------------------------------------------------------------------------------------------- image
def test_fashion_mnist():
    train, test = FashionMNIST("train"), FashionMNIST("test")
    assert len(train) == 60000 and len(test) == 10000
    assert Counter(train.targets) == {c: 6000 for c in range(10)} and set(test.targets) == set(range(10))
    item = train[0]
    assert item["source"].shape == (1, 28, 28) and 0 <= item["source"].min() and item["source"].max() <= 1
    assert (cache_dir() / "fashion_mnist").is_dir()  # gunzipped copies live in the cache
    small = FashionMNIST("train", limit=100, transform=eval_transform(32, channels=3, mean=(0.5,), std=(0.5,)))
    assert len(small) == 100 and small.targets == train.targets[:100]
    x = small[0]["source"]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1])  # gray replicated to RGB
    aug = pretrain_transform(32, channels=3)
    views = [FashionMNIST("test", transform=aug, limit=1)[0]["source"] for _ in range(2)]
    assert views[0].shape == (3, 32, 32) and not torch.equal(*views)  # random augmentation


def test_cifar10_packs_into_cache_and_limits_balanced():
    root_before = sorted(p.name for p in (data_root() / "cifar10").iterdir())
    test = CIFAR10("test", limit=205)
    packed = sorted(p.name for p in (cache_dir() / "cifar10").glob("*/*.npz"))  # <key of the archive>/<split>.npz
    assert packed == ["test.npz", "train.npz"]
    assert sorted(p.name for p in (data_root() / "cifar10").iterdir()) == root_before  # data root untouched
    counts = Counter(test.targets)
    assert len(test) == 205 and sorted(counts.values()) == [20] * 5 + [21] * 5
    assert test.classes[:3] == ["airplane", "automobile", "bird"]
    batch = torch.utils.data.default_collate([test[i] for i in range(4)])
    assert batch["source"].shape == (4, 3, 32, 32) and batch["label"].dtype == torch.long
    full = CIFAR10("test")
    assert len(full) == 10000 and Counter(full.targets) == {c: 1000 for c in range(10)}


def test_image_folder_dataset(tmp_path):
    cifar = CIFAR10("test", limit=20)  # 2 images per class, written out as an ImageNet-style folder
    for k in range(len(cifar)):
        image, label = cifar.base[cifar.indices[k]]
        (tmp_path / cifar.classes[label]).mkdir(exist_ok=True)
        image.save(tmp_path / cifar.classes[label] / f"{k:02d}.png")
    folder = ImageFolderDataset(tmp_path, limit=10)
    assert folder.classes == cifar.classes and Counter(folder.targets) == {c: 1 for c in range(10)}
    assert torch.equal(folder[0]["source"], cifar[0]["source"]) and folder[1]["label"] == 1


# --------------------------------------------------------------------------------------------- text
def test_gpt2_tokenizer_matches_vocab_json():
    tok = Tokenizer.gpt2()
    assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (50265, 50264, 0, 1, 2, 3)
    vocab = json.loads((data_root() / "tokenizers/gpt2/vocab.json").read_text(encoding="utf-8"))
    assert tok.encode(" Hello world") == [vocab["ĠHello"] + 4, vocab["Ġworld"] + 4]
    line = next(ln for ln in read_corpus("wikitext-2", "valid").splitlines() if len(ln) > 200).strip()
    ids = tok.encode(line)
    assert tok.decode(ids) == line and all(4 <= i < 50261 for i in ids)
    assert tok.decode([0, *ids[:2], 50264, 2], skip_special=False).startswith("<s>") and "<mask>" in tok.decode(
        [50264], skip_special=False)
    assert tok.id_to_token(vocab["ĠHello"] + 4) == "ĠHello" and tok.id_to_token(1) == "<pad>"


def test_trained_bpe_round_trips_and_is_cached():
    text = read_corpus("tinyshakespeare", "train")
    tok = Tokenizer.train(text, vocab_size=500, name="shakespeare-test")
    assert tok.vocab_size == 500 and tok.mask_id == 499
    assert [tok.id_to_token(i) for i in (0, 1, 2, 3, 499)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    sample = read_corpus("tinyshakespeare", "valid")[:500]
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample and all(4 <= i < 499 for i in ids)
    cached = sorted((cache_dir() / "tokenizers").glob("shakespeare-test-500-*.json"))  # keyed by the corpus
    assert len(cached) == 1
    again = Tokenizer.train(text, vocab_size=500, name="shakespeare-test")  # the same corpus: read from the cache
    assert again.fingerprint == tok.fingerprint and sorted((cache_dir() / "tokenizers").glob("shakespeare-test-500-*")) == cached
    other = Tokenizer.train(text[: len(text) // 2], vocab_size=500, name="shakespeare-test")  # same name, other text
    assert other.fingerprint != tok.fingerprint
    fresh = Tokenizer.train(text, vocab_size=500, name="shakespeare-test-2")  # training is deterministic
    assert fresh.encode(sample) == ids


def test_read_corpus_splits():
    whole = (data_root() / "text/tinyshakespeare/input.txt").read_text(encoding="utf-8")
    train, valid = read_corpus("tinyshakespeare", "train"), read_corpus("tinyshakespeare", "valid")
    assert train + valid == whole and abs(len(train) / len(whole) - 0.9) < 1e-3
    assert read_corpus("wikitext-2", "test").lstrip().startswith("= Robert <unk> =")
    with pytest.raises(DatasetNotFoundError, match="wikitext-2 train"):
        read_corpus("wikitext-2", "train")


def test_token_blocks():
    blocks = TokenBlocks(torch.arange(4, 105), block_size=12)  # 101 tokens -> 10 blocks of 10 (+2)
    assert len(blocks) == 10
    for k in range(len(blocks)):
        src = blocks[k]["source"]
        assert src.shape == (12,) and src[0] == 0 and src[-1] == 2
        assert torch.equal(src[1:-1], torch.arange(4 + 10 * k, 14 + 10 * k))
    tok = Tokenizer.gpt2()
    wiki = text_blocks("wikitext-2", "valid", tok, block_size=64)
    assert len(wiki) > 1000 and (wiki.blocks[:, 0] == 0).all() and (wiki.blocks[:, -1] == 2).all()
    assert wiki.blocks.shape[1] == 64 and wiki.blocks.dtype == torch.long
    assert len(list((cache_dir() / "tokens").glob("wikitext-2-valid-*.npy"))) == 1
    assert torch.equal(text_blocks("wikitext-2", "valid", tok, block_size=64).blocks, wiki.blocks)  # from the cache
    with pytest.raises(ValueError):
        TokenBlocks([5, 6, 7], block_size=8)


def test_text_collator():
    items = [dict(source=torch.tensor([0, 7, 8, 2]), label=1), dict(source=torch.tensor([0, 9, 2]), label=0)]
    batch = TextCollator(pad_id=1)(items)
    assert batch["source"].tolist() == [[0, 7, 8, 2], [0, 9, 2, 1]]
    assert batch["padding_mask"].tolist() == [[False] * 4, [False] * 3 + [True]]
    assert batch["label"].tolist() == [1, 0]


# ------------------------------------------------------------------------------------ errors, probes
def test_download_checks_hash_and_leaves_no_partial_file(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3_000_000))
    out = tmp_path / "out"
    dest = download_file(src.as_uri(), out / "a.bin", sha256=hashlib.sha256(src.read_bytes()).hexdigest())
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(OSError, match="checksum"):
        download_file(src.as_uri(), out / "b.bin", md5="0" * 32)
    assert [p.name for p in out.iterdir()] == ["a.bin"]
    # the tiny-shakespeare download path, served from the mirror (same bytes as karpathy's file)
    monkeypatch.setattr(text_module, "SHAKESPEARE_URL", (data_root() / "text/tinyshakespeare/input.txt").as_uri())
    fetched = read_corpus("tinyshakespeare", "valid", root=tmp_path, download=True)
    assert fetched == read_corpus("tinyshakespeare", "valid") and (tmp_path / "text/tinyshakespeare/input.txt").exists()


def test_missing_dataset_error_says_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as err:
        FSDD("test", root=tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    assert str((tmp_path / "fsdd" / "recordings").resolve()) in str(err.value) and "D2V_DATA" in str(err.value)
    monkeypatch.setenv("D2V_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="Fashion-MNIST.*nowhere"):
        FashionMNIST("test")
    with pytest.raises(DatasetNotFoundError, match="GPT-2 BPE tokenizer.*D2V_DOWNLOAD=never.*set D2V_DATA"):
        Tokenizer.gpt2()


def test_sentence_polarity_split_is_deterministic_disjoint_balanced():
    texts, labels = read_sentences("sentence_polarity")
    assert len(texts) == 10662 and sum(labels) == 5331
    train_idx, test_idx = stratified_split(labels)
    assert stratified_split(labels) == (train_idx, test_idx)
    assert not set(train_idx) & set(test_idx) and len(train_idx) + len(test_idx) == len(labels)
    task = probe_task("sentence_polarity", max_tokens=32)
    assert (task.num_classes, task.modality, len(task.train), len(task.test)) == (2, "text", 8530, 2132)
    assert abs(np.mean(task.train.labels) - 0.5) < 1e-3 and abs(np.mean(task.test.labels) - 0.5) < 1e-3
    assert task.train.texts == probe_task("sentence_polarity", limit_test=10).train.texts
    assert np.mean(task.train.labels[:200]) == pytest.approx(0.5, abs=0.1)  # a prefix is balanced too
    assert all(len(s) <= 32 and s[0] == 0 and s[-1] == 2 for s in task.train.ids)
    batch = task.collate_fn([task.train[i] for i in range(8)])
    assert batch["source"].shape[0] == 8 and batch["padding_mask"].dtype == torch.bool


@pytest.mark.parametrize("name, classes, source_shape", [
    ("fsdd_digits", 10, None), ("fsdd_speakers", 6, None), ("fashion_mnist", 10, (3, 32, 32)),
    ("cifar10", 10, (3, 32, 32)), ("subjectivity", 2, None)])
def test_probe_tasks(name, classes, source_shape):
    task = probe_task(name, limit_train=60, limit_test=30, image_size=32, channels=3)
    assert task.num_classes == classes and len(task.train) == 60 and len(task.test) == 30
    batch = task.collate_fn([task.train[i] for i in range(0, 60, 6)])
    assert batch["label"].shape == (10,) and batch["label"].max() < classes
    if source_shape:
        assert batch["source"].shape == (10, *source_shape)
    else:
        assert batch["source"].shape[0] == 10 and batch["padding_mask"].shape == batch["source"].shape
    if name == "fsdd_speakers":
        assert {task.test[i]["label"] for i in range(30)} == set(range(6))
