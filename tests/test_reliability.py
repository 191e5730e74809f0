"""Reliability (issue 10): a bad input gets a clear error, and nothing already written is lost.
One section per kind of failure: run folders, the tokenizer inside text checkpoints, content-keyed
caches, config validation, CLI numbers, errors that name what is wrong, model-entry checks, and
the DDP equality condition. Synthetic data and 1-3 training steps; about 30 s on 2 CPU cores."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_mini import Data2Vec, preset
from d2v_mini.__main__ import main
from d2v_mini.config import OptimConfig, override
from d2v_mini.errors import CheckpointError, ConfigError, DataFileError, InputError, RunFolderError
from d2v_mini.train import TrainOptions, load_checkpoint, pretrain
from tests.conftest import tiny_batch
from tests.ddp_worker import synthetic_images, tiny_cfg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def opts(out, **kw) -> TrainOptions:
    return TrainOptions(out_dir=str(out), device="cpu", progress=False, **kw)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A finished 2-step run of the shrunk image preset (log every step)."""
    out = tmp_path_factory.mktemp("run") / "run"
    pretrain(tiny_cfg(), synthetic_images(16), opts=opts(out, steps=2, log_every=1))
    return out


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


# -------------------------------------------------------------------------------- 1. run folders
def test_existing_run_needs_resume_or_overwrite(image_run, tmp_path):
    run = copy_run(image_run, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(RunFolderError, match="holds a run already.*--resume.*--overwrite"):
        pretrain(tiny_cfg(), synthetic_images(16), opts=opts(run, steps=3, overwrite=False))
    with pytest.raises(SystemExit, match="holds a run already"):  # the CLI refuses before loading any data
        main(["pretrain", "--modality", "image", "--steps", "1", "--out", str(run), "--no-progress"])
    assert snapshot(run) == before
    res = pretrain(tiny_cfg(), synthetic_images(16), opts=opts(run, steps=1, log_every=1, overwrite=True))
    assert [h["step"] for h in res.history] == [1]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"] == 1


def test_failed_resume_leaves_the_run_untouched(image_run, tmp_path):
    """A resume that fails on its data (too few items for a batch) keeps metrics.jsonl and config.json."""
    run = copy_run(image_run, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(ValueError, match="too few for one micro-batch"):
        pretrain(tiny_cfg(**{"optim.lr": 1e-3}), synthetic_images(4), opts=opts(run, steps=4, resume=True))
    assert snapshot(run) == before


def test_run_files_are_not_written_through_symlinks(image_run, tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("precious\n")
    run = copy_run(image_run, tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(RunFolderError, match="symbolic link"):
        pretrain(tiny_cfg(), synthetic_images(16), opts=opts(run, steps=3, resume=True))
    assert outside.read_text() == "precious\n"


# ------------------------------------------------------------------- 2. the tokenizer in the checkpoint
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "run"
    main(["pretrain", "--modality", "text", "--steps", "1", "--limit", "64", "--out", str(out), "--no-progress"])
    return out


def test_text_checkpoint_carries_its_tokenizer(text_run, tmp_path, monkeypatch):
    from d2v_mini.pipeline import run_tokenizer, tokenizer_for

    ck = torch.load(text_run / "checkpoint.pt", weights_only=True)
    info = ck["pipeline"]
    assert info["dataset"] == "tinyshakespeare" and info["tokenizer_json"]
    cfg = load_checkpoint(text_run / "checkpoint.pt").cfg
    want = tokenizer_for(cfg, "tinyshakespeare")
    monkeypatch.setenv("D2V_DATA", str(tmp_path))  # no corpus any more: the checkpoint alone rebuilds it
    tok = run_tokenizer(cfg, info)
    assert tok.fingerprint == info["tokenizer"] == want.fingerprint
    assert tok.encode("To be, or not to be") == want.encode("To be, or not to be")


def test_probe_and_resume_refuse_another_runs_pipeline(text_run, tmp_path):
    run = copy_run(text_run, tmp_path / "run")
    meta = json.loads((run / "pipeline.json").read_text())
    (run / "pipeline.json").write_text(json.dumps({**meta, "dataset": "subjectivity", "tokenizer": "x-123"}))
    with pytest.raises(SystemExit, match="pipeline.json does not belong to"):
        main(["probe", "--checkpoint", str(run), "--limit-train", "20", "--limit-test", "10"])
    with pytest.raises(SystemExit, match="pretrained with dataset 'tinyshakespeare'"):
        main(["pretrain", "--modality", "text", "--dataset", "subjectivity", "--steps", "2", "--limit", "64",
              "--out", str(run), "--resume", "--no-progress"])


# ------------------------------------------------------------------------- 3. content-keyed caches
def test_tokenizer_cache_is_keyed_by_the_corpus():
    from d2v_mini.data import Tokenizer, cache_dir

    before = set((cache_dir() / "tokenizers").glob("*")) if (cache_dir() / "tokenizers").exists() else set()
    with pytest.raises(ValueError, match="no non-blank line"):
        Tokenizer.train("\n  \n", 265, name="probe-corpus")
    assert set((cache_dir() / "tokenizers").glob("*")) == before  # nothing cached
    a = Tokenizer.train("the cat sat on the mat\n" * 50, 265, name="probe-corpus")
    b = Tokenizer.train("a dog ran in a fog\n" * 50, 265, name="probe-corpus")
    assert a.fingerprint != b.fingerprint and b.decode(b.encode("a dog ran")) == "a dog ran"


def _idx_gz(path: Path, labels: bytes) -> None:
    """A 1-D uint8 IDX file, gzipped without compression (its size depends on the length only)."""
    raw = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + labels
    path.write_bytes(gzip.compress(raw, compresslevel=0, mtime=0))


def test_idx_cache_sees_a_same_size_change(tmp_path):
    from d2v_mini.data.image import read_idx

    path = tmp_path / "probe-labels-idx1-ubyte.gz"
    _idx_gz(path, bytes([1, 2, 3, 4]))
    assert read_idx(path).tolist() == [1, 2, 3, 4]
    size = path.stat().st_size
    _idx_gz(path, bytes([4, 3, 2, 1]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert path.stat().st_size == size and read_idx(path).tolist() == [4, 3, 2, 1]


def _jpeg(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_packed_jpeg_cache_is_keyed_by_the_archive_and_layout_errors_name_it(tmp_path):
    from d2v_mini.data.image import PackedJPEGs

    archive = tmp_path / "probe_jpg.tar.gz"
    _tar(archive, {"train/a/1.jpg": _jpeg(10), "train/b/2.jpg": _jpeg(10)})
    assert PackedJPEGs(archive, "train", "probe-jpeg").classes == ["a", "b"]
    _tar(archive, {"train/c/1.jpg": _jpeg(200), "train/d/2.jpg": _jpeg(200), "train/e/3.jpg": _jpeg(200)})
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    fresh = PackedJPEGs(archive, "train", "probe-jpeg")
    assert fresh.classes == ["c", "d", "e"] and np.asarray(fresh[0][0]).mean() > 150
    _tar(archive, {"flat.jpg": _jpeg(0), "train/a/deep/x.jpg": _jpeg(0)})
    with pytest.raises(DataFileError, match="probe_jpg.tar.gz: member .* is not <split>/<class>/<file>.jpg"):
        PackedJPEGs(archive, "train", "probe-jpeg-bad")


# ---------------------------------------------------------------------------- 4. config validation
@pytest.mark.parametrize("change, message", [
    ({"optim.schedule": "cosin"}, r"optim.schedule must be 'cosine', 'tri_stage' or 'constant', got 'cosin'"),
    ({"ema.decay_start": 1.5}, r"ema.decay_start must be in \[0, 1\], got 1.5"),
    ({"loss.reduction": "median"}, r"loss.reduction must be 'sum' or 'mean', got 'median'"),
    ({"optim.warmup_steps": -5}, r"optim.warmup_steps must be >= 0, got -5"),
    ({"optim.clip_norm": -1.0}, r"optim.clip_norm must be >= 0, got -1.0"),
    ({"masking.kind": "span"}, r"masking.kind = 'span' does not fit modality 'image'"),
    ({"optim.lr": "fast"}, r"optim.lr must be a finite number, got 'fast' \(str\)"),
    ({"optim.batch_size": 8.5}, r"optim.batch_size must be an integer, got 8.5 \(float\)"),
    ({"crop": -1}, r"cfg.crop must be >= 0, got -1"),
    ({"targets.top_k": 9}, r"targets.top_k = 9 but the encoder has only 4 blocks"),
])
def test_config_values_are_checked_when_built(change, message):
    with pytest.raises(ConfigError, match=message):
        override(preset("image", "tiny"), **change)


def test_config_edited_in_place_is_checked_before_use(tmp_path):
    cfg = preset("image", "tiny")
    cfg.optim.schedule = "cosin"
    with pytest.raises(ConfigError, match="optim.schedule"):
        Data2Vec(cfg)
    with pytest.raises(ConfigError, match="optim.lr"):
        OptimConfig(lr="fast")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------- 5. CLI numbers
@pytest.mark.parametrize("argv", [
    ["pretrain", "--modality", "image", "--steps", "0"],
    ["pretrain", "--modality", "image", "--steps", "-3"],
    ["pretrain", "--modality", "image", "--batch-size", "0"],
    ["pretrain", "--modality", "image", "--limit", "-5"],
    ["pretrain", "--modality", "image", "--log-every", "0"],
    ["probe", "--checkpoint", "x", "--limit-train", "0"],
    ["demo", "--steps-scale", "-3"],
    ["demo", "--random-inits", "0"],
])
def test_cli_numbers_are_checked_by_argparse(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "expected" in capsys.readouterr().err


def test_resume_at_or_past_the_target_says_so(image_run, tmp_path):
    run = copy_run(image_run, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(ValueError, match="at step 2, past steps=1: pass a larger steps"):
        pretrain(tiny_cfg(), synthetic_images(16), opts=opts(run, steps=1, resume=True))
    res = pretrain(tiny_cfg(), synthetic_images(16), opts=opts(run, steps=2, resume=True))
    assert res.history == [] and res.start_step == 2 and snapshot(run) == before


# ------------------------------------------------------------------ 6. errors that say what is wrong
def test_unreadable_checkpoints_are_explained(image_run, tmp_path):
    good = (image_run / "checkpoint.pt").read_bytes()
    cases = {"truncated.pt": (good[: len(good) // 2], "truncated or corrupted"),
             "random.pt": (os.urandom(4096), "not a torch checkpoint"),
             "config.json": (b'{"modality": "image"}', "is a JSON/text file")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=message) as e:
            load_checkpoint(tmp_path / name)
        assert "weights_only=False" not in str(e.value)


def test_another_architectures_checkpoint_is_refused_on_resume(image_run, tmp_path):
    run = copy_run(image_run, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"holds a image/tiny .* does not fit this .*encoder.depth 2 vs 3"):
        pretrain(tiny_cfg(**{"encoder.depth": 3}), synthetic_images(16), opts=opts(run, steps=3, resume=True))
    speech = preset("speech", "tiny")
    with pytest.raises(CheckpointError, match="modality image vs speech"):
        pretrain(speech, synthetic_images(16), opts=opts(run, steps=3, resume=True))


def test_bad_data_files_are_named_and_can_be_skipped(tmp_path):
    from d2v_mini.data import ImageFolderDataset, load_audio, read_corpus
    from d2v_mini.data.skip import SkipBadItems

    for name in ("bad.wav", "bad.flac"):
        (tmp_path / name).write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(64))
        with pytest.raises(DataFileError, match=f"cannot decode audio file .*{name}"):
            load_audio(tmp_path / name)
    for cls, value in (("a", 0), ("b", 255)):
        (tmp_path / "images" / cls).mkdir(parents=True)
        (tmp_path / "images" / cls / "ok.jpg").write_bytes(_jpeg(value))
    (tmp_path / "images" / "a" / "zbroken.jpg").write_bytes(_jpeg(0)[:40])
    images = ImageFolderDataset(tmp_path / "images")
    with pytest.raises(DataFileError, match="cannot decode .*zbroken.jpg"):
        [images[i] for i in range(len(images))]
    skipping = SkipBadItems(images, max_fraction=0.5)
    with pytest.warns(UserWarning, match="zbroken.jpg"):
        labels = [skipping[i]["label"] for i in range(len(skipping))]
    assert labels == [0, 1, 1] and skipping.skipped == 1  # the bad image replaced by the next one
    (tmp_path / "text" / "tinyshakespeare").mkdir(parents=True)
    (tmp_path / "text" / "tinyshakespeare" / "input.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 20)
    with pytest.raises(DataFileError, match=r"input.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_corpus("tinyshakespeare", "train", root=tmp_path)


def test_resume_tolerates_a_blank_or_partial_last_metrics_line(image_run, tmp_path):
    run = copy_run(image_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('\n{"step": 3, "lo')  # a run killed while logging
    with pytest.warns(UserWarning, match="dropped 1 unreadable line"):
        pretrain(tiny_cfg(), synthetic_images(16), opts=opts(run, steps=3, resume=True, log_every=1))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_cli_prints_one_line_and_exits_non_zero(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        main(["probe", "--checkpoint", str(tmp_path / "x.pt")])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    with pytest.raises(CheckpointError):  # --debug: the exception itself, with its traceback
        main(["--debug", "probe", "--checkpoint", str(tmp_path / "x.pt")])


# ------------------------------------------------------------------------- 7. model entry checks
@pytest.mark.parametrize("make, message", [
    (lambda x, pm: (x[0], None), r"got one waveform \(8000,\).*wav\[None\]"),
    (lambda x, pm: (x[:, None], None), r"got \(4, 1, 8000\).*rearrange\(x, 'b 1 n -> b n'\)"),
    (lambda x, pm: (x[:0], None), "empty batch"),
    (lambda x, pm: (x.index_put((torch.tensor([2]), torch.tensor([5])), torch.tensor(float("inf"))), None),
     r"1 NaN/Inf value\(s\), in batch row\(s\) \[2\]"),
    (lambda x, pm: (x, pm.index_fill(1, torch.arange(100), True) & (torch.arange(4) == 1)[:, None]),
     r"rows \[1\] have padding before samples"),
    (lambda x, pm: (x, pm | (torch.arange(4) == 3)[:, None]), r"row\(s\) \[3\] are all padding"),
    (lambda x, pm: ((x * 32768).short(), None), "must be floating point.*x.float\\(\\) / 32768"),
])
def test_speech_inputs_are_checked_before_masking(make, message):
    model = Data2Vec(preset("speech", "tiny"))
    x, _ = tiny_batch("speech")
    source, pm = make(x, torch.zeros_like(x, dtype=torch.bool))
    with pytest.raises(InputError, match=message):
        model(source, pm)


def test_float64_inputs_are_cast_and_empty_image_masks_give_zero_loss():
    torch.manual_seed(0)
    model = Data2Vec(preset("speech", "tiny")).eval()
    x, _ = tiny_batch("speech")
    a = model(x, generator=torch.Generator().manual_seed(1)).loss
    b = model(x.double(), generator=torch.Generator().manual_seed(1)).loss
    assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-5)
    image = Data2Vec(preset("image", "tiny"))
    imgs, _ = tiny_batch("image")
    out = image(imgs, mask=torch.zeros(4, image.student.num_patches, dtype=torch.bool))
    assert out.loss.item() == 0.0 and out.num_masked == 0
    text = Data2Vec(preset("text", "tiny"))
    tokens, _ = tiny_batch("text")
    tokens[1] = text.cfg.encoder.pad_idx
    with pytest.raises(InputError, match=r"row\(s\) \[1\] are all padding"):
        text(tokens)
    with pytest.raises(InputError, match="add the batch axis"):
        image(imgs[0])


# ------------------------------------------------------------------------ 8. DDP equality condition
def test_ddp_equality_condition_is_stated():
    """The claim 'a global batch gives the same step on any number of processes' holds for batches that
    carry their masks; model-drawn masks and random crops come from per-process streams. The trainer,
    the README and notebook 06 say so."""
    import d2v_mini.train as train

    nb = json.loads((REPO / "notebooks" / "06_scaling.ipynb").read_text())
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for doc in (train.__doc__, (REPO / "README.md").read_text(), text):
        assert "precomputed" in doc and "per-process" in doc, doc[:200]


def test_token_batching_reads_sizes_through_skip_bad_files_and_names_a_bad_header(tmp_path):
    """main's token batching (max_tokens > 0) plans from the clips' headers: through issue-10's
    SkipBadItems too, and a corrupted header is a DataFileError naming the file, not a soundfile error."""
    import soundfile as sf

    from d2v_mini.batching import dataset_sizes
    from d2v_mini.data.skip import SkipBadItems
    from d2v_mini.data.speech import audio_size
    from d2v_mini.errors import DataFileError

    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(1600, dtype="float32"), 16_000)

    class Files(torch.utils.data.Dataset):
        sizes = [1600, 800]

        def __len__(self):
            return 2

    assert dataset_sizes(SkipBadItems(Files())).tolist() == [1600, 800]
    assert SkipBadItems([1, 2]).sizes is None  # no sizes: the sampler's own TypeError follows
    assert audio_size(good) == 1600
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00not a wave file at all")
    with pytest.raises(DataFileError, match="bad.wav"):
        audio_size(bad)
