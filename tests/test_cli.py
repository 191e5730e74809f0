"""The command line: presets, a 3-step pretraining per modality, a probe of its checkpoint, and the
demo's outputs on a small text run. Reads the data mirror ($D2V_DATA). About 1-2 min on 2 CPU cores."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch

from d2v_mini.__main__ import main
from d2v_mini.presets import RELEASED_PARAMS

# small data-set limits so that a step and a probe take seconds (at least one global batch each)
LIMITS = {"speech": 32, "image": 128, "text": 64}


def test_presets_json(capsys):
    main(["presets", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {"modality", "preset", "layers", "dim", "heads", "encoder_params"} <= set(rows[0])
    counts = {(r["modality"], r["preset"]): r["encoder_params"] for r in rows}
    assert {m for m, _ in counts} == {"speech", "image", "text"} and ("speech", "tiny") in counts
    for key, released in RELEASED_PARAMS.items():  # base / large = the released checkpoints' sizes
        assert abs(counts[key] - released) / released < 0.02, (key, counts[key], released)


def test_presets_table(capsys):
    main(["presets"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["modality", "preset", "layers"] and "124.1M" in out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One 3-step tiny pretraining per modality, through the CLI."""
    runs = {}
    for m, limit in LIMITS.items():
        out = tmp_path_factory.mktemp(f"run-{m}")
        main(["pretrain", "--modality", m, "--preset", "tiny", "--steps", "3", "--out", str(out),
              "--limit", str(limit), "--log-every", "1", "--no-progress"])
        runs[m] = out
    return runs


@pytest.mark.parametrize("modality", list(LIMITS))
def test_pretrain_writes_checkpoint_and_metrics(checkpoints, modality):
    out = checkpoints[modality]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["target_var"] > 0 for r in lines)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["state"]["step"] == 3 and ck["cfg"]["modality"] == modality and ck["cfg"]["name"] == "tiny"
    meta = json.loads((out / "pipeline.json").read_text())
    assert meta["modality"] == modality and meta["dataset"] == {"speech": "fsdd", "image": "fashion_mnist",
                                                                 "text": "tinyshakespeare"}[modality]


@pytest.mark.parametrize("modality", list(LIMITS))
def test_probe_prints_accuracy_and_baseline(checkpoints, modality, capsys):
    main(["probe", "--checkpoint", str(checkpoints[modality] / "checkpoint.pt"), "--limit-train", "60",
          "--limit-test", "40", "--layer", "mean"])
    out = capsys.readouterr().out
    acc = {name: float(a) for name, a in re.findall(r"(pretrained|random_init)\s+accuracy (\d\.\d+)", out)}
    assert set(acc) == {"pretrained", "random_init"} and all(0.0 <= a <= 1.0 for a in acc.values())
    assert "(60 train / 40 test" in out


def test_probe_json_and_resume(checkpoints, capsys):
    out = checkpoints["text"]
    main(["probe", "--checkpoint", str(out), "--limit-train", "40", "--limit-test", "20", "--no-baseline",
          "--json", "--layer", "2"])
    res = json.loads(capsys.readouterr().out)
    assert list(res) == ["pretrained"] and res["pretrained"]["num_test"] == 20 and res["pretrained"]["layer"] == 2
    main(["pretrain", "--modality", "text", "--steps", "5", "--out", str(out), "--limit", "64", "--resume",
          "--log-every", "1", "--no-progress"])  # continues from step 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_probe_without_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["probe", "--checkpoint", str(tmp_path / "nothing.pt")])


def test_demo_writes_summary_and_curves(tmp_path, monkeypatch, capsys):
    from d2v_mini import demo

    monkeypatch.setitem(demo.SPECS, "text", replace(demo.SPECS["text"], steps=4, probe_train=60, probe_test=40))
    main(["demo", "--out", str(tmp_path), "--modalities", "text", "--random-inits", "2"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    keys = {"dataset", "steps", "seconds", "final_loss", "target_var", "probe_accuracy", "random_init_probe_accuracy"}
    assert list(summary) == ["text"] and keys <= set(summary["text"]) and summary["text"]["steps"] == 4
    r = summary["text"]
    assert len(r["random_init_probe_accuracies"]) == 2 and r["dataset"] == "subjectivity"
    assert r["random_init_probe_accuracy"] == pytest.approx(sum(r["random_init_probe_accuracies"]) / 2)
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "text" / "checkpoint.pt").exists()
    assert "random init" in capsys.readouterr().out
