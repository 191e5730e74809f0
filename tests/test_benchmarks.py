"""Smoke and consistency tests of benchmarks/ (runtime 20-45 s on 2 shared CPU cores, mostly the three
`--quick` subprocesses). Nothing here asserts on a wall-clock time: only that each script runs, prints
its table, and that its numbers are consistent with each other and with the model."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d2v_mini.presets import preset

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_step  # noqa: E402
import common  # noqa: E402
from d2v_mini.data2vec import Data2Vec  # noqa: E402


def run_quick(script: str, tmp_path: Path) -> tuple[str, dict]:
    out = tmp_path / f"{script}.json"
    cmd = [sys.executable, str(BENCH / f"{script}.py"), "--quick", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, json.loads(out.read_text())


def check_header(stdout: str, result: dict) -> None:
    assert stdout.startswith("# "), "the header comes first"
    for key in ("torch", "device", "threads", "precision"):
        assert f"#   {key}: " in stdout
    assert result["header"]["threads"] == 1 and result["header"]["device"].startswith("cpu")
    assert [r["modality"] for r in result["rows"]] == list(common.MODALITIES)


def test_bench_vs_hf_quick(tmp_path):
    pytest.importorskip("transformers")
    stdout, result = run_quick("bench_vs_hf", tmp_path)
    check_header(stdout, result)
    assert "ours_ms" in stdout and "hf_ms" in stdout and "ratio" in stdout
    for r in result["rows"]:
        assert r["ours_ms"] > 0 and r["hf_ms"] > 0
        assert math.isclose(r["ratio"], r["ours_ms"] / r["hf_ms"])
        # the HF config is equivalent to ours: same parameter count, except HF text's token-type row [1, D]
        dim = common.bench_config(r["modality"], "tiny").encoder.dim
        assert r["hf_extra_params"] == (dim if r["modality"] == "text" else 0), r
        assert 0.0 < r["masked"] < 1.0


def test_bench_step_quick(tmp_path):
    stdout, result = run_quick("bench_step", tmp_path)
    check_header(stdout, result)
    assert "student_ms" in stdout and "share of the step" in stdout
    for r in result["rows"]:
        ms = [r[f"{p}_ms"] for p in bench_step.PHASES]
        assert all(m > 0 for m in ms)
        assert math.isclose(sum(ms), r["sum_ms"], rel_tol=1e-9)
        assert math.isclose(sum(r[f"{p}_pct"] for p in bench_step.PHASES), 100.0, rel_tol=1e-9)


def test_bench_throughput_quick(tmp_path):
    stdout, result = run_quick("bench_throughput", tmp_path)
    check_header(stdout, result)
    assert "samples_per_s" in stdout
    for r in result["rows"]:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert math.isclose(r["samples_per_s"] * r["step_ms"] / 1e3, r["batch"])  # samples/s = B / step time
        if r["modality"] == "speech":  # a tiny crop holds crop / 16 kHz seconds of audio
            crop = preset("speech", "tiny").crop
            assert r["input"] == str(crop)
            assert math.isclose(r["audio_s_per_s"], r["samples_per_s"] * crop / 16_000)
        if r["modality"] == "text":  # 64-token blocks
            assert math.isclose(r["tokens_per_s"], 64 * r["samples_per_s"])


@pytest.mark.parametrize("modality", common.MODALITIES)
def test_split_forward_is_data2vec_forward(modality):
    """The phase-split step measures the real step: same mask stream -> the same loss as Data2Vec.forward.
    If data2vec.py changes its forward, this fails until bench_step.split_forward follows."""
    cfg = common.bench_config(modality, "tiny")
    torch.manual_seed(0)
    model = Data2Vec(cfg).train()
    with torch.no_grad():  # a student that differs from its teacher, so the targets are not trivially related
        for p in model.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    source = common.make_batch(cfg, 3, torch.device("cpu"), generator=torch.Generator().manual_seed(1))
    ref = model(source, generator=torch.Generator().manual_seed(2))
    loss, n = bench_step.split_forward(model, source, torch.Generator().manual_seed(2))
    assert n == ref.num_masked > 0
    torch.testing.assert_close(loss, ref.loss, rtol=1e-6, atol=1e-7)
    other, _ = bench_step.split_forward(model, source, torch.Generator().manual_seed(3))
    assert not torch.allclose(other, ref.loss), "a different mask must give a different loss"


def test_make_batch_text_has_no_special_inside():
    cfg = common.bench_config("text", "tiny")
    ids = common.make_batch(cfg, 4, torch.device("cpu"), tokens=32, generator=torch.Generator().manual_seed(0))
    enc = cfg.encoder
    assert ids.shape == (4, 32) and ids.dtype == torch.long
    assert (ids[:, 0] == enc.bos_idx).all() and (ids[:, -1] == enc.eos_idx).all()
    inner = ids[:, 1:-1]
    assert (inner >= 4).all() and (inner < enc.vocab_size).all() and not (inner == enc.mask_idx).any()


def test_bench_v2_time_to_accuracy_summary():
    import bench_v2

    assert bench_v2.eval_fraction("1/3") == pytest.approx(1 / 3) and bench_v2.eval_fraction("1") == 1.0
    with pytest.raises(SystemExit, match="fractions"):
        bench_v2.eval_fraction("4/3")
    curve = lambda *acc: [{"steps": i, "seconds": 10.0 * i, "accuracy": a} for i, a in enumerate(acc, 1)]  # noqa: E731
    rows = [dict(modality="image", seed=0, v1_accuracy=0.5, v1_seconds=100.0, v2_curve=curve(0.4, 0.6), time_ratio=0.2),
            dict(modality="image", seed=1, v1_accuracy=0.5, v1_seconds=100.0, v2_curve=curve(0.45, 0.55),
                 time_ratio=0.4),
            dict(modality="text", seed=0, v1_accuracy=0.7, v1_seconds=100.0, v2_curve=curve(0.6, 0.65), time_ratio=None),
            # one seed never reaches its own 1.0 accuracy, the other does at once: the mean curves decide
            dict(modality="speech", seed=0, v1_accuracy=0.5, v1_seconds=90.0, v2_curve=curve(0.45, 0.48),
                 time_ratio=None),
            dict(modality="speech", seed=1, v1_accuracy=0.4, v1_seconds=110.0, v2_curve=curve(0.46, 0.47),
                 time_ratio=10 / 110)]
    s = bench_v2.summarize(rows)
    assert s["image"]["reached"] == 2 and s["image"]["ratio_mean"] == pytest.approx(0.3)
    assert s["image"]["ratio_se"] == pytest.approx(0.1)  # stdev 0.1414 / sqrt(2)
    assert s["image"]["mean_curve"]["ratio"] == pytest.approx(0.2)  # means 0.425, 0.575 vs 0.5: stage 2, 20 s
    assert s["text"]["reached"] == 0 and s["text"]["ratio_mean"] is None  # never reached: not averaged in
    assert s["text"]["v2_final_accuracy"] == [0.65] and s["text"]["mean_curve"]["ratio"] is None
    sp = s["speech"]["mean_curve"]
    assert s["speech"]["reached"] == 1 and sp["v1_accuracy"] == pytest.approx(0.45)
    assert sp["v2_stages"][0]["accuracy"] == pytest.approx(0.455) and sp["ratio"] == pytest.approx(10 / 100)
    assert sp["v1_accuracy_se"] == pytest.approx(0.05)  # stdev 0.0707 / sqrt(2)


def test_bench_text_targets_quick(tmp_path):
    """At init the learned position table already explains a large share of the text targets' variance;
    without absolute positions (tiny_v2's ALiBi) position explains little and token identity most; the instance
    norm over each sentence removes the sentence means that LN targets keep."""
    stdout, result = run_quick("bench_text_targets", tmp_path)
    assert stdout.startswith("# ") and result["header"]["threads"] == 1
    learned, alibi_in, alibi_ln = result["rows"]
    assert learned["init"]["by_position"] > 3 * alibi_in["init"]["by_position"]
    assert alibi_in["init"]["by_token"] > 0.8 > alibi_in["init"]["by_position"] + 0.5
    assert alibi_ln["init"]["by_sentence"] > 2 * alibi_in["init"]["by_sentence"]
