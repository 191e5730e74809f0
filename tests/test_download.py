"""The download path, offline: a local HTTP server over a folder in the data mirror's layout stands in for
`D2V_MIRROR_URL`, and the data root and cache start empty.

- every data set the demo and the notebooks read is downloaded from it and matches the mirror's SHA256SUMS;
- a corrupted file (alone, or inside a folder) and a file the manifest does not list are refused, and
  nothing is left in the data root;
- a tiny demo (pretraining + probes, all three modalities) runs on the downloaded data;
- with no network and no data, the CLI ends with one line that names the data set, the data root and both
  ways to get it (exit status 1, no traceback), and `--no-download` never touches the network.

The server binds 127.0.0.1 only, serves read-only (GET / HEAD) and is shut down with its fixture.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from d2v_mini.__main__ import main
from d2v_mini.data import (CIFAR10, FSDD, DatasetNotFoundError, DownloadError, FashionMNIST, LibriSpeech,
                           SpeechCommands, Tokenizer, download_allowed, read_corpus)
from d2v_mini.data import download as download_module
from d2v_mini.data.probe import read_sentences

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("D2V_DATA", REPO.parent / "shared" / "data"))  # conftest points it at the mirror
pytestmark = pytest.mark.skipif(not (MIRROR / "SHA256SUMS").exists(), reason="needs the data mirror's SHA256SUMS")


class _QuietHandler(SimpleHTTPRequestHandler):
    timeout = 10  # seconds a connection may idle

    def log_message(self, *args) -> None:
        pass


@functools.cache
def manifest() -> dict[str, str]:
    """The mirror's SHA256SUMS: {path: sha256}."""
    lines = (MIRROR / "SHA256SUMS").read_text().splitlines()
    return {name.strip(): digest for digest, _, name in (line.partition("  ") for line in lines) if name}


def serve(folder: Path):
    """Serve `folder` read-only on 127.0.0.1 (a free port) from a daemon thread: (url, stop)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    return f"http://127.0.0.1:{server.server_address[1]}", stop


def fresh_env(mp: pytest.MonkeyPatch, base: Path, url: str | None) -> Path:
    """An empty data root and cache under `base`, downloads allowed, the mirror URL `url` (None: unset)."""
    mp.setenv("D2V_DATA", str(base / "data"))
    mp.setenv("D2V_CACHE", str(base / "cache"))
    mp.delenv("D2V_DOWNLOAD", raising=False)
    if url:
        mp.setenv("D2V_MIRROR_URL", url)
    else:
        mp.delenv("D2V_MIRROR_URL", raising=False)
    return base / "data"


def files_under(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """The real mirror behind a local server; an empty data root and cache shared by this module's tests."""
    url, stop = serve(MIRROR)
    mp = pytest.MonkeyPatch()
    root = fresh_env(mp, tmp_path_factory.mktemp("fresh"), url)
    yield url, root
    mp.undo()
    stop()


# What the demo and the notebooks read (demo: FSDD, Fashion-MNIST, subjectivity; 00/04: FSDD; 01: Speech
# Commands mini, LibriSpeech test-clean, CIFAR-10, GPT-2 BPE, WikiText-2 valid; 02: FSDD, CIFAR-10,
# tiny-shakespeare; 03: Fashion-MNIST; 05: tiny-shakespeare, sentence polarity; small profile: GPT-2 BPE).
NEEDED = ["fsdd/recordings/", "speech_commands_mini/", "librispeech/LibriSpeech/test-clean/",
          "fashion_mnist/train-images-idx3-ubyte.gz", "fashion_mnist/train-labels-idx1-ubyte.gz",
          "fashion_mnist/t10k-images-idx3-ubyte.gz", "fashion_mnist/t10k-labels-idx1-ubyte.gz",
          "cifar10/cifar10_jpg.tar.gz", "text/tinyshakespeare/input.txt", "text/wikitext-2/valid.txt",
          "text/sentence_polarity/", "text/subjectivity/", "tokenizers/gpt2/"]


def test_every_dataset_of_the_demo_and_notebooks_downloads_from_the_mirror(mirror):
    url, root = mirror
    assert not root.exists()
    assert len(FSDD("test")) == 300 and len(FSDD("train")) == 2700
    commands = SpeechCommands("train")
    assert len(commands.classes) == 30 and "sheila" in commands.classes
    assert [len(LibriSpeech("test-clean"))] == [4]
    assert len(FashionMNIST("train", limit=20)) == 20 and len(FashionMNIST("test")) == 10_000
    assert CIFAR10("test", limit=20).classes[0] == "airplane"
    assert read_corpus("tinyshakespeare", "valid") and read_corpus("wikitext-2", "valid")
    assert Tokenizer.gpt2().vocab_size == 50_265
    for task in ("sentence_polarity", "subjectivity"):
        texts, labels = read_sentences(task)
        assert len(texts) == {"sentence_polarity": 10_662, "subjectivity": 10_000}[task]

    got = files_under(root)
    sums = manifest()
    for need in NEEDED:  # every needed file of the mirror arrived (a folder: all the files listed under it)
        wanted = [name for name in sums if name == need or (need.endswith("/") and name.startswith(need))]
        assert wanted and all(name in got for name in wanted), need
    assert len([n for n in got if n.startswith("fsdd/recordings/")]) == 3000
    for name, path in got.items():  # ... with the manifest's sha256, and nothing else (no temp files)
        assert name in sums, f"{name} is not a mirror file"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[name], name


def test_demo_runs_end_to_end_on_downloaded_data(mirror, tmp_path, monkeypatch, capsys):
    from d2v_mini import demo

    for m, spec in demo.SPECS.items():  # a few steps, small probes: the point is the whole path
        monkeypatch.setitem(demo.SPECS, m, replace(spec, steps=3, probe_train=40, probe_test=20))
    main(["demo", "--out", str(tmp_path), "--random-inits", "1", "--threads", "1"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["speech", "image", "text"]
    for m, r in summary.items():
        assert r["steps"] == 3 and r["final_loss"] == r["final_loss"] and r["target_var"] > 0, m
        assert 0 <= r["probe_accuracy"] <= 1 and (r["probe_train"], r["probe_test"]) == (40, 20), m
    assert "random init" in capsys.readouterr().out


def test_corrupted_or_unlisted_files_are_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    served = tmp_path / "served"
    sums = manifest()
    listed = {}
    for name in ("text/tinyshakespeare/input.txt", "text/subjectivity/README.txt",
                 "text/subjectivity/plot.tok.gt9.5000", "text/subjectivity/quote.tok.gt9.5000",
                 "text/sentence_polarity/README.txt", "text/sentence_polarity/rt-polarity.pos",
                 "text/sentence_polarity/rt-polarity.neg"):
        (served / name).parent.mkdir(parents=True, exist_ok=True)
        (served / name).write_bytes((MIRROR / name).read_bytes())
        listed[name] = sums[name]
    for name in ("text/tinyshakespeare/input.txt", "text/subjectivity/quote.tok.gt9.5000"):  # one byte changed
        data = bytearray((served / name).read_bytes())
        data[100] ^= 1
        (served / name).write_bytes(bytes(data))
    (served / "text/wikitext-2").mkdir(parents=True)
    (served / "text/wikitext-2/valid.txt").write_bytes((MIRROR / "text/wikitext-2/valid.txt").read_bytes())  # unlisted
    (served / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in listed.items()))
    url, stop = serve(served)
    try:
        root = fresh_env(monkeypatch, tmp_path / "fresh", url)
        with pytest.raises(DownloadError, match=r"tiny-shakespeare is not in the data root .*checksum mismatch"):
            read_corpus("tinyshakespeare", "valid")
        with pytest.raises(DownloadError, match=r"subjectivity .*checksum mismatch .*quote\.tok"):
            read_sentences("subjectivity")
        with pytest.raises(DownloadError, match=r"SHA256SUMS lists neither text/wikitext-2/valid\.txt"):
            read_corpus("wikitext-2", "valid")
        assert files_under(root) == {}  # no partial file, no temp file, no half folder
        texts, _ = read_sentences("sentence_polarity")  # the intact folder of the same mirror is accepted
        assert len(texts) == 10_662 and set(files_under(root)) == {n for n in listed if "polarity" in n}
    finally:
        stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_cli_prints_one_clear_line_and_fails(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("D2V_DOWNLOAD", "D2V_DATA")}
    env.update(D2V_MIRROR_URL=f"http://127.0.0.1:{_closed_port()}", D2V_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "d2v_mini", "pretrain", "--modality", "speech", "--steps", "1",
                           "--out", str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    data_root = str((tmp_path / "data").resolve())
    for part in ("FSDD", f"data root {data_root}", "D2V_DATA is unset", "Connection refused",
                 "D2V_MIRROR_URL", "set D2V_DATA to a folder that already holds it"):
        assert part in err, part
    assert not (tmp_path / "data" / "fsdd").exists()


def test_without_a_mirror_the_original_host_is_asked_and_its_failure_is_one_line(tmp_path, monkeypatch):
    asked = []

    def no_network(url, *args, **kwargs):
        asked.append(url if isinstance(url, str) else url.full_url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    root = fresh_env(monkeypatch, tmp_path, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--modality", "image", "--steps", "1", "--out", str(tmp_path / "run")])
    msg = str(exit_info.value.code)
    assert asked == [FashionMNIST.URL + "train-images-idx3-ubyte.gz"]
    assert msg.startswith("d2v_mini: Fashion-MNIST is not in the data root") and "\n" not in msg
    assert f"{root.resolve()}" in msg and "name resolution" in msg and "D2V_MIRROR_URL" in msg
    assert files_under(tmp_path) == {}


def test_no_download_flag_and_env_never_touch_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded although forbidden"))
    fresh_env(monkeypatch, tmp_path, "http://127.0.0.1:9")
    with pytest.raises(SystemExit, match="FSDD .*downloading is off .*D2V_DOWNLOAD=never"):
        main(["pretrain", "--modality", "speech", "--steps", "1", "--no-download", "--out", str(tmp_path / "r")])
    assert os.environ["D2V_DOWNLOAD"] == "never"
    with pytest.raises(DatasetNotFoundError, match="download=False was passed"):
        FSDD("test", download=False)
    assert download_allowed(True) and not download_allowed(False) and not download_allowed(None)
    monkeypatch.setenv("D2V_DOWNLOAD", "always")
    assert download_allowed(None)
    monkeypatch.setenv("D2V_DOWNLOAD", "sometimes")
    with pytest.raises(ValueError, match="D2V_DOWNLOAD='sometimes'"):
        download_allowed(None)


def test_mirror_manifest_is_read_once_per_url(mirror, monkeypatch):
    url, _ = mirror
    download_module.mirror_manifest(url)  # cached by the first test (or now)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("SHA256SUMS fetched again"))
    assert download_module.mirror_manifest(url) == manifest()


# ----------------------------------------------------------------- original hosts, from local archives
def _tar(path: Path, members: dict[str, Path | bytes]) -> Path:
    """A gzipped tar at `path` with `members` {name in the archive: file or bytes}."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, src in members.items():
            data = src if isinstance(src, bytes) else src.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_original_host_archives_are_cut_and_checked(tmp_path, monkeypatch):
    """The no-mirror fetchers of FSDD, the Speech Commands subset and the Cornell sentences, on local
    archives laid out like the originals (file:// URLs): what is kept, and what is refused."""
    from d2v_mini.data import sources

    root = fresh_env(monkeypatch, tmp_path / "fresh", None)
    wavs = sorted((MIRROR / "fsdd/recordings").glob("*.wav"))
    fsdd = _tar(tmp_path / "fsdd.tar.gz", {f"fsdd-master/recordings/{p.name}": p for p in wavs}
                | {"fsdd-master/README.md": b"readme"})
    monkeypatch.setattr(FSDD, "URL", fsdd.as_uri())
    assert len(FSDD("all")) == 3000 and set(files_under(root)) == {f"fsdd/recordings/{p.name}" for p in wavs}

    mini = MIRROR / "speech_commands_mini"
    clips = {f"./{p.parent.name}/{p.name}": p for p in sorted(mini.glob("*/*.wav"))}
    extra = {"./bed/ffffffff_nohash_0.wav": clips["./bed/" + sorted(mini.glob("bed/*.wav"))[0].name],
             "./_background_noise_/noise.wav": b"noise", "./README.md": b"readme"}
    lists = {f"./{n}": mini / n for n in ("testing_list.txt", "validation_list.txt", "LICENSE")}
    archive = _tar(tmp_path / "sc.tar.gz", clips | extra | lists)
    monkeypatch.setattr(SpeechCommands, "URL", archive.as_uri())
    monkeypatch.setattr(SpeechCommands, "SHA256", "0" * 64)
    with pytest.raises(DownloadError, match="Speech Commands .*checksum mismatch"):
        SpeechCommands("train")
    assert not (root / "speech_commands_mini").exists()
    monkeypatch.setattr(SpeechCommands, "SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    assert len(SpeechCommands("test")) + len(SpeechCommands("validation")) + len(SpeechCommands("train")) == 300
    kept = {n.removeprefix("speech_commands_mini/") for n in files_under(root) if n.startswith("speech_commands_mini/")}
    assert kept == {n.removeprefix("./") for n in clips | lists}  # the manifest's 300 clips, no extra file

    cornell = tmp_path / "cornell"
    cornell.mkdir()
    pol = MIRROR / "text/sentence_polarity"
    _tar(cornell / "rt-polaritydata.tar.gz", {
        "rt-polaritydata/rt-polarity.pos": (pol / "rt-polarity.pos").read_text().encode("latin-1", "replace"),
        "rt-polaritydata/rt-polarity.neg": (pol / "rt-polarity.neg").read_text().encode("latin-1", "replace"),
        "rt-polaritydata.README.1.0.txt": b"readme"})
    sub = MIRROR / "text/subjectivity"
    _tar(cornell / "rotten_imdb.tar.gz", {"quote.tok.gt9.5000": b"only one line\n",
                                          "plot.tok.gt9.5000": sub / "plot.tok.gt9.5000", "subjdata.README.1.0": b"r"})
    monkeypatch.setattr(sources, "CORNELL", cornell.as_uri() + "/")
    texts, labels = read_sentences("sentence_polarity")
    assert len(texts) == 10_662 and sum(labels) == 5331  # the Latin-1 originals are read too
    assert sorted(p.name for p in (root / "text/sentence_polarity").iterdir()) == [
        "README.txt", "rt-polarity.neg", "rt-polarity.pos"]
    with pytest.raises(DownloadError, match="quote.tok.gt9.5000 has 1 sentences, expected 5000"):
        read_sentences("subjectivity")
    assert not (root / "text/subjectivity").exists()
