"""The GPU profile `small` (presets.py): its EMA schedule fits its run, its data is big enough for its steps, its
compute fits the notebooks' time budget, and one T4 holds its update without accumulation. Seconds, no GPU."""
from __future__ import annotations

import pytest

from d2v_mini.notebook import SCALE
from d2v_mini.pipeline import SMALL_DATASET_ITEMS, default_dataset, pretrain_data
from d2v_mini.planner import plan_run
from d2v_mini.presets import SMALL_BUDGET_FLOPS, SMALL_STEPS, preset
from d2v_mini.scaling import flops_per_sample

MODALITIES = ("speech", "image", "text")


@pytest.mark.parametrize("modality", MODALITIES)
def test_small_runs_the_notebooks_steps_with_an_ema_horizon_well_below_them(modality):
    cfg = preset(modality, "small")
    assert cfg.optim.total_steps == SMALL_STEPS == 300 * SCALE["small"]  # notebooks 03-05: P.steps(300)
    horizon = 1 / (1 - cfg.ema.decay_end)  # updates the teacher averages over at the end
    assert horizon <= cfg.optim.total_steps / 2, (modality, horizon)
    assert cfg.ema.decay_start <= cfg.ema.decay_end and 0 < cfg.ema.anneal_steps <= cfg.optim.total_steps
    assert cfg.optim.warmup_steps < cfg.optim.total_steps / 5


@pytest.mark.parametrize("modality", MODALITIES)
def test_small_data_is_big_enough_for_its_steps(modality):
    cfg = preset(modality, "small")
    name = default_dataset(modality, "small")
    assert name != default_dataset(modality) or modality == "image"  # speech / text: not the tiny data
    epochs = cfg.optim.total_steps * cfg.optim.batch_size / SMALL_DATASET_ITEMS[name]
    assert 0.1 <= epochs <= 20, (modality, name, epochs)  # not 320 epochs of 1 MB of Shakespeare


def test_small_image_data_has_the_items_the_table_says():
    ds, _ = pretrain_data(preset("image", "small"))  # Fashion-MNIST from the data mirror
    assert len(ds) == SMALL_DATASET_ITEMS["fashion_mnist"]
    assert ds[0]["source"].shape == (3, 32, 32)


def test_small_notebook_runs_fit_the_t4_budget():
    """Notebook 00: speech 120 x SCALE steps; 02: speech (batch 8) and text (batch 16), 150 x SCALE each;
    03-05: 300 x SCALE steps at the preset's batch. Each notebook's pretraining FLOPs <= SMALL_BUDGET_FLOPS."""
    s = SCALE["small"]

    def run(modality, steps, batch=None):
        cfg = preset(modality, "small")
        return flops_per_sample(cfg)["train_flops"] * (batch or cfg.optim.batch_size) * steps

    notebooks = {"00": run("speech", 120 * s), "02": run("speech", 150 * s, 8) + run("text", 150 * s, 16),
                 "03": run("image", 300 * s), "04": run("speech", 300 * s), "05": run("text", 300 * s)}
    for nb, flops in notebooks.items():
        assert flops <= SMALL_BUDGET_FLOPS, (nb, flops / 1e15)


@pytest.mark.parametrize("modality", MODALITIES)
def test_small_update_fits_one_t4_without_accumulation(modality):
    p = plan_run(preset(modality, "small"), gpus=1, gpu_gib=15, precision="fp16")
    assert p.fits and p.accum_steps == 1


def test_profile_fit_plans_accumulation_on_a_gpu_and_leaves_cpu_runs_alone(monkeypatch):
    """Notebook 03 with D2V_PROFILE=base on one 16 GiB GPU: micro-batches x accumulation, not 2,048 at once."""
    import types

    import torch

    from d2v_mini.notebook import Profile

    cfg = preset("image", "base")
    kw = dict(profile="base", preset="base", scale=100, on_colab=False, seed=0)
    assert Profile(device="cpu", **kw).fit(cfg) is cfg
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=16 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # a T4: planned for fp16
    fitted = Profile(device="cuda", **kw).fit(cfg)
    assert fitted.optim.batch_size == 2048 and fitted.optim.accum_steps == 16  # 16 micro-batches of 128
    speech = Profile(device="cuda", **kw).fit(preset("speech", "base"))
    assert speech.optim.accum_steps == speech.optim.batch_size >= 16  # token batches: every batch accumulated


@pytest.mark.parametrize("modality", MODALITIES)
def test_small_presets_train_a_step_on_their_input_shape(modality, tmp_path):
    """The small configs are buildable and trainable (on the CPU here, 2 items of their full input shape)."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_check import Synthetic

    from d2v_mini.config import override
    from d2v_mini.train import TrainOptions, pretrain

    torch.set_num_threads(1)
    cfg = override(preset(modality, "small"), **{"optim.batch_size": 2})
    res = pretrain(cfg, Synthetic(cfg, 2), None, TrainOptions(steps=1, out_dir=str(tmp_path), device="cpu",
                                                              log_every=1, progress=False))
    h = res.history[0]
    assert h["loss"] == h["loss"] and h["loss"] > 0 and h["target_var"] > 0
    assert res.model.teacher.num_updates == 1 and h["ema_decay"] == pytest.approx(cfg.ema.decay_start)
