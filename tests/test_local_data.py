"""The paper's data through `--dataset` (d2v_mini/data/local.py), on small fixtures made in tmp: an image
folder of generated JPEGs, a fairseq manifest and audio folders of generated WAVs, local text files; and
the CLI's pretrain on each with --accum-steps. Seconds on 2 CPU cores."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from d2v_mini.__main__ import main
from d2v_mini.data import local
from d2v_mini.data.text import Tokenizer, read_corpus
from d2v_mini.pipeline import pretrain_data
from d2v_mini.presets import preset


@pytest.fixture
def image_folder(tmp_path):
    """ImageNet layout: <root>/train/<class>/*.jpg, 2 classes x 6 images of 40 x 48 pixels."""
    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / "imagenet" / "train" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                tmp_path / "imagenet" / "train" / c / f"{i}.jpg")
    return tmp_path / "imagenet"


@pytest.fixture
def wav_folder(tmp_path):
    """speaker/chapter/*.wav (LibriSpeech-like), 8 clips of 2.0-2.7 s at 16 kHz, distinct lengths."""
    root = tmp_path / "speech"
    rng = np.random.default_rng(0)
    for i in range(8):
        d = root / f"{i % 2}" / "10"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{i}.wav", rng.standard_normal(32_000 + 1_500 * i).astype(np.float32) * 0.1, 16_000)
    return root


def test_image_folder_gives_augmented_images_at_the_encoder_size(image_folder):
    cfg = preset("image", "tiny")
    ds, collate = pretrain_data(cfg, str(image_folder))
    assert len(ds) == 12  # the train/ subfolder was found: both classes, every file
    batch = collate([ds[i] for i in range(4)])
    assert set(batch) == {"source"} and batch["source"].shape == (4, 3, 32, 32)  # resized, labels dropped


def test_manifest_lists_clips_with_their_sizes(wav_folder, tmp_path):
    manifest = local.write_manifest(wav_folder, tmp_path / "train.tsv")
    lines = manifest.read_text().splitlines()
    assert lines[0] == str(wav_folder.resolve()) and len(lines) == 9
    ds = local.AudioManifest(manifest)
    want = sorted(32_000 + 1_500 * i for i in range(8))
    assert sorted(ds.sizes) == want  # from the manifest, as fairseq reads them
    item = ds[0]
    assert len(item["source"]) == ds.sizes[0]
    assert abs(float(item["source"].mean())) < 1e-3 and abs(float(item["source"].std()) - 1) < 1e-2  # normalised


def test_manifest_and_folders_read_the_same_clips(wav_folder, tmp_path):
    cfg = preset("speech", "tiny")
    manifest = local.write_manifest(wav_folder, tmp_path / "train.tsv")
    a, _ = pretrain_data(cfg, str(manifest))
    b, collate = pretrain_data(cfg, f"{wav_folder / '0'},{wav_folder / '1'}")
    assert len(a) == len(b) == 8
    assert torch.equal(a[3]["source"], b[3]["source"])  # same sorted order, same decoding
    batch = collate([b[i] for i in range(4)])
    assert batch["source"].shape == (4, 32_000)  # cropped to cfg.crop (2 s)


def test_bad_manifest_and_missing_path_say_what_was_expected(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("/root\nclip.wav 123\n")  # a space, not a tab
    with pytest.raises(ValueError, match="relative/path<TAB>num_samples"):
        local.AudioManifest(bad)
    with pytest.raises(ValueError, match="fairseq manifest"):
        pretrain_data(preset("speech", "tiny"), str(tmp_path / "nowhere"))


def test_local_text_files_become_blocks_in_the_encoder_tokenizer(tmp_path):
    f = tmp_path / "corpus.txt"  # a local corpus: 300 kB of WikiText-2 validation text from the data mirror
    f.write_text(read_corpus("wikitext-2", "valid")[:300_000], encoding="utf-8")
    cfg = preset("text", "tiny")
    ds, collate = pretrain_data(cfg, str(f))
    assert len(ds) > 10
    block = ds[0]["source"]
    assert block.shape == (cfg.crop,) and block[0] == 0 and block[-1] == 2  # <s> ... </s>
    assert int(block.max()) < cfg.encoder.vocab_size
    batch = collate([ds[i] for i in range(3)])
    assert not batch["padding_mask"].any()


def test_pack_blocks_stops_after_max_blocks():
    tok = Tokenizer.train("one two three four five six seven\n" * 50, 270, name="test-pack-blocks")
    rows = (f"one two three {i}\nfour five six seven" for i in range(10_000))  # a long stream
    seen = []
    blocks = local.pack_blocks((seen.append(r) or r for r in rows), tok, 16, max_blocks=5, chunk=10)
    assert len(blocks) == 5 and len(seen) < 100  # streamed: stopped long before the end


def test_cli_pretrains_on_an_image_folder_with_accumulation(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    main(["pretrain", "--modality", "image", "--preset", "tiny", "--dataset", str(image_folder), "--steps", "2",
          "--batch-size", "8", "--accum-steps", "2", "--out", str(out), "--no-progress", "--log-every", "1",
          "--precision", "fp32", "--device", "cpu"])
    assert json.loads((out / "config.json").read_text())["optim"]["accum_steps"] == 2
    assert json.loads((out / "pipeline.json").read_text())["dataset"] == str(image_folder)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_hf_names_are_parsed_not_looked_up():
    assert local.classify("text", "hf:wikitext:wikitext-103-raw-v1") == ("hf", ("wikitext", "wikitext-103-raw-v1"))
    assert local.classify("text", "hf:bookcorpus") == ("hf", ("bookcorpus", None))
    with pytest.raises(ValueError, match="hf:<name>"):
        local.classify("text", "hf:")
