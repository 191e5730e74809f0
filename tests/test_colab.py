"""Colab: one repository URL (pyproject.toml) behind every badge and install line, `make repoint` for a fork,
`setup()` on a Colab runtime, `make lab` as root, and the released-weights helper of the notebooks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from d2v_mini import links, notebook

REPO = Path(__file__).resolve().parents[1]
FORK = "https://github.com/someone/d2v_fork"


def test_badges_and_install_lines_agree_with_pyproject():
    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert links.repository_url(REPO) == url == notebook.repo_url()
    assert links.check(REPO) == []
    readme = (REPO / "README.md").read_text()
    notebooks = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
    names = {nb.name for nb in notebooks}  # 00-06, the closing 08 (and 07, data2vec 2.0, once it lands)
    assert {f"0{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8)} <= {name[:2] for name in names}
    assert readme.count("colab.research.google.com/github/") == len(notebooks)
    for nb in notebooks:
        text = nb.read_text()
        assert text.count("colab.research.google.com/github/") == 1 and text.count("%pip install") == 1, nb.name


def _copy_tree(dest: Path) -> Path:
    for name in ("pyproject.toml", "README.md", "Makefile"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "notebooks", dest / "notebooks")
    (dest / "d2v_mini").mkdir()  # links.py runs as a script: it needs nothing else of the package
    shutil.copy(REPO / "d2v_mini" / "links.py", dest / "d2v_mini" / "links.py")
    return dest


def test_make_repoint_rewrites_only_the_url_lines(tmp_path):
    tree = _copy_tree(tmp_path)
    old = links.repository_url(tree)
    before = {p: p.read_text().splitlines() for p in [tree / "pyproject.toml", tree / "README.md",
                                                      *sorted((tree / "notebooks").glob("*.ipynb"))]}
    proc = subprocess.run(["make", "--no-print-directory", "repoint", f"REPO={FORK}", f"PYTHON={sys.executable}"],
                          cwd=tree, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert links.repository_url(tree) == FORK and links.check(tree) == []
    for path, lines in before.items():
        after = path.read_text().splitlines()
        assert len(after) == len(lines) and old not in path.read_text(), path.name
        changed = [b for a, b in zip(lines, after) if a != b]
        assert changed and all("someone/d2v_fork" in line for line in changed), path.name
    nb = json.loads((tree / "notebooks" / "03_vision.ipynb").read_text())
    assert f'%pip install -q "d2v_mini[colab] @ git+{FORK}"' in "".join(nb["cells"][1]["source"])
    assert (f"https://colab.research.google.com/github/someone/d2v_fork/blob/main/notebooks/03_vision.ipynb"
            in "".join(nb["cells"][0]["source"]))
    usage = subprocess.run(["make", "--no-print-directory", "repoint"], cwd=tree, capture_output=True, text=True)
    assert usage.returncode != 0 and "usage: make repoint REPO=" in usage.stdout


def test_check_reports_a_stale_badge_and_repoint_refuses_non_github_urls(tmp_path):
    tree = _copy_tree(tmp_path)
    readme = tree / "README.md"
    readme.write_text(readme.read_text().replace("github/d2v-mini/d2v_mini/blob/main/notebooks/04",
                                                 "github/old/place/blob/main/notebooks/04"))
    problems = links.check(tree)
    assert len(problems) == 2 and all("04_speech" in p or "old/place" in p for p in problems)
    with pytest.raises(ValueError, match="not a GitHub repository URL"):
        links.repoint("https://gitlab.com/me/d2v_mini", tree)
    assert links.repository_url(tree) == links.repository_url(REPO)  # nothing written


def test_make_lab_allows_root_only_as_root():
    out = subprocess.run(["make", "-n", "--no-print-directory", "lab"], cwd=REPO, capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if "jupyter lab" in x]
    assert line and ("--allow-root" in line[0]) == (os.getuid() == 0)


def test_setup_on_colab_installs_what_is_missing_and_downloads_to_the_session_disk(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(notebook, "on_colab", lambda: True)
    real = notebook.importlib.util.find_spec
    monkeypatch.setattr(notebook.importlib.util, "find_spec", lambda m: None if m == "datasets" else real(m))
    monkeypatch.setattr(notebook.subprocess, "run", lambda cmd, check: ran.append(cmd))
    for var in ("D2V_DATA", "D2V_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(notebook, "COLAB_DATA", str(tmp_path / "content" / "d2v_data"))
    threads = torch.get_num_threads()
    try:
        notebook.setup()
    finally:
        torch.set_num_threads(threads)
    assert ran == [[sys.executable, "-m", "pip", "install", "-q", "datasets>=2.18"]]
    assert os.environ["D2V_DATA"] == str(tmp_path / "content" / "d2v_data") and (tmp_path / "content").is_dir()
    assert os.environ["D2V_DOWNLOAD"] == "always"


def _tiny_hf_text_model():
    from transformers import Data2VecTextConfig, Data2VecTextModel

    cfg = Data2VecTextConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=20, max_position_embeddings=20, type_vocab_size=1)
    torch.manual_seed(0)
    return Data2VecTextModel(cfg).eval()


def test_released_encoder_loads_a_local_directory_and_is_none_offline(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    hf = _tiny_hf_text_model()
    hf.save_pretrained(tmp_path / "local")
    monkeypatch.setenv("CI", "1")  # a local directory is loaded even under CI (no download involved)
    enc = notebook.released_encoder("text", str(tmp_path / "local"))
    tokens = torch.tensor([[0, 5, 9, 17, 2]])
    with torch.no_grad():
        ours, theirs = enc(tokens).last_hidden_state, hf(input_ids=tokens).last_hidden_state
    assert not enc.training and torch.allclose(ours, theirs, atol=1e-5)

    assert notebook.released_encoder("text") is None  # CI: no download
    monkeypatch.delenv("CI")
    monkeypatch.setattr(notebook, "hub_reachable", lambda *a, **k: False)
    assert notebook.released_encoder("speech") is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "facebook/data2vec-text-base" in lines[0] and "CI run" in lines[0]
    assert "facebook/data2vec-audio-base" in lines[1] and "offline" in lines[1]
    with pytest.raises(ValueError, match="unknown modality"):
        notebook.released_encoder("video")


def test_setup_elsewhere_uses_the_checkouts_data_folder(monkeypatch, capsys):
    monkeypatch.delenv("D2V_DATA", raising=False)
    monkeypatch.setenv("D2V_DOWNLOAD", "never")
    threads = torch.get_num_threads()
    try:
        notebook.setup()
    finally:
        torch.set_num_threads(threads)
    assert os.environ["D2V_DATA"] == str(REPO / "data")  # not ./data of wherever Jupyter runs (notebooks/)
    assert "are not downloaded (D2V_DOWNLOAD=never)" in capsys.readouterr().out
