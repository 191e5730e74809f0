"""The CPU-safe parts of benchmarks/gpu_check.py (what CI can run): argument parsing, the plan, the dry run,
the refusal without a GPU, and its synthetic data through the trainer. The GPU parts need a CUDA machine."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from d2v_mini.config import override  # noqa: E402
from d2v_mini.presets import preset  # noqa: E402
from d2v_mini.train import TrainOptions, pretrain  # noqa: E402


def test_arguments_and_their_errors():
    a = gpu_check.parse_args([])
    assert a.parts == list(gpu_check.PARTS) and a.modalities == ["speech", "image", "text"] and not a.dry_run
    a = gpu_check.parse_args(["--parts", "base,throughput", "--notebooks", "03,05", "--dry-run"])
    assert a.parts == ["base", "throughput"] and a.notebooks == ["03", "05"] and a.dry_run
    with pytest.raises(SystemExit, match="--parts"):
        gpu_check.parse_args(["--parts", "everything"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--base-steps", "0"])


def test_peak_flops_by_gpu_name():
    assert gpu_check.peak_tflops("NVIDIA H200") == 989 and gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.peak_tflops("Tesla T4") == 65 and gpu_check.peak_tflops("Some GPU") is None
    assert gpu_check.peak_tflops("Some GPU", 100.0) == 100.0


@pytest.mark.parametrize("gib", [16, 80])
def test_dry_run_writes_the_plan(tmp_path, gib):
    out = tmp_path / "gpu_check.json"
    res = gpu_check.main(["--dry-run", "--gpu-gib", str(gib), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["header"]["dry_run"] is True and "base" not in saved and "throughput" not in saved
    plan = saved["plan"]
    assert plan == json.loads(json.dumps(res["plan"]))
    assert [Path(n).name[:2] for n in plan["notebooks"]] == ["00", "01", "02", "03", "04", "05", "06"]
    for m in ("image", "text"):  # the planner's split reproduces the recipe's update on one GPU
        p = plan["base"][m]
        assert p["accum_steps"] * p["micro_batch"] == preset(m, "base").optim.batch_size and p["fits"]
        assert plan["throughput"][m]["batch"] == min(p["micro_batch"], 64)
    speech = plan["base"]["speech"]
    assert speech["accum_steps"] == speech["global_batch"] and speech["fits"]  # one GPU: every batch accumulated
    assert speech["global_batch"] * speech["max_tokens"] == pytest.approx(16 * 3_800_000, rel=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_only_the_dry_run_runs(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        gpu_check.main(["--parts", "base", "--out", str(tmp_path / "x.json")])


@pytest.mark.parametrize("modality", ["speech", "image", "text"])
def test_synthetic_data_trains_through_the_trainer(tmp_path, modality):
    cfg = override(preset(modality, "tiny"), **{"optim.batch_size": 4})
    ds = gpu_check.Synthetic(cfg, 8)
    x = ds[3]["source"]
    assert torch.equal(x, ds[3]["source"])  # made from the index: the same item every time
    collate = None
    if modality == "speech":
        from d2v_mini.data import AudioCollator
        from d2v_mini.pipeline import SourceOnly

        assert ds.sizes == [cfg.crop] * 8 and x.shape == (cfg.crop,)
        collate = SourceOnly(AudioCollator(max_samples=cfg.crop))
    res = pretrain(cfg, ds, collate, TrainOptions(steps=1, out_dir=str(tmp_path), device="cpu", log_every=1,
                                                  progress=False, precision="fp32"))
    assert len(res.history) == 1 and res.history[0]["loss"] == res.history[0]["loss"]


def test_synthetic_data_survives_pickling_for_spawned_workers():
    import pickle

    ds = gpu_check.Synthetic(preset("text", "tiny"), 4)
    assert torch.equal(pickle.loads(pickle.dumps(ds))[2]["source"], ds[2]["source"])
