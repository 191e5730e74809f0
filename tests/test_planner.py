"""The run planner (d2v_mini/planner.py) and `python -m d2v_mini plan`: a plan reproduces the recipe's update,
a smaller GPU gets a smaller micro-batch and more accumulation, and the memory estimate stays under the GPU."""
from __future__ import annotations

import json

import pytest

from d2v_mini.__main__ import main
from d2v_mini.batching import check_token_update
from d2v_mini.planner import apply_plan, fit_to_gpu, plan_run
from d2v_mini.presets import preset
from d2v_mini.scaling import GIB, memory_estimate

CASES = [("image", "base"), ("image", "large"), ("text", "base"), ("speech", "small"), ("image", "small")]


@pytest.mark.parametrize("modality,name", CASES)
@pytest.mark.parametrize("gpus,gib", [(1, 16), (1, 80), (8, 40), (16, 80)])
def test_plan_reproduces_the_global_batch_within_memory(modality, name, gpus, gib):
    cfg = preset(modality, name)
    p = plan_run(cfg, gpus=gpus, gpu_gib=gib)
    assert p.gpus * p.accum_steps * p.micro_batch == cfg.optim.batch_size == p.global_batch
    assert p.fits and p.memory_bytes <= (gib - 2) * GIB
    assert p.memory_bytes == memory_estimate(cfg, p.micro_batch)["total"]
    if p.accum_steps > 1:  # the micro-batch is as large as fits: one more sample per micro-batch would not
        assert memory_estimate(cfg, p.micro_batch * p.accum_steps)["total"] > (gib - 2) * GIB


@pytest.mark.parametrize("modality,name", [("image", "base"), ("text", "base"), ("image", "large")])
def test_a_smaller_gpu_gets_a_smaller_micro_batch_and_more_accumulation(modality, name):
    cfg = preset(modality, name)
    big, small = plan_run(cfg, 1, 80), plan_run(cfg, 1, 16)
    assert small.micro_batch < big.micro_batch and small.accum_steps > big.accum_steps
    assert small.global_batch == big.global_batch


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 16])
def test_speech_base_token_batches_accumulate_16_over_gpus(gpus):
    cfg = preset("speech", "base")
    p = plan_run(cfg, gpus=gpus, gpu_gib=80)
    assert (p.global_batch, p.accum_steps, p.max_tokens) == (16, 16 // gpus, 3_800_000)
    check_token_update(p.global_batch, p.accum_steps, gpus)  # the trainer accepts it
    planned = apply_plan(cfg, p)
    assert planned.optim.accum_steps == 16 // gpus and planned.optim.batch_size == 16


def test_speech_base_on_a_small_gpu_splits_each_batch_keeping_the_update():
    cfg = preset("speech", "base")
    p = plan_run(cfg, gpus=1, gpu_gib=16)
    assert p.max_tokens < 3_800_000 and p.fits
    assert p.global_batch * p.max_tokens == pytest.approx(16 * 3_800_000, rel=1e-6)  # the same samples per update
    assert p.accum_steps == p.global_batch


def test_fit_to_gpu_keeps_the_model_and_changes_only_the_batching():
    cfg = preset("image", "base")
    fitted = fit_to_gpu(cfg, gpu_gib=24)
    assert fitted.encoder == cfg.encoder and fitted.optim.batch_size == 2048 and fitted.optim.accum_steps > 1


def test_bad_setups_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        plan_run(preset("image", "base"), gpus=3, gpu_gib=80)
    with pytest.raises(ValueError, match="gpus >= 1"):
        plan_run(preset("image", "base"), gpus=0)


def test_cli_plan(capsys):
    main(["plan", "--modality", "image", "--preset", "base", "--gpus", "8", "--gpu-gib", "40", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["gpus"] * d["accum_steps"] * d["micro_batch"] == 2048
    assert d["command"].startswith("torchrun --standalone --nproc_per_node=8") and "--accum-steps" in d["command"]
    main(["plan", "--modality", "speech", "--preset", "base", "--gpus", "4"])
    out = capsys.readouterr().out
    assert "accum_steps 4" in out and "--max-tokens 3800000" in out and "60.8M samples" in out


def test_pretrain_options_for_scaling_up():
    from d2v_mini.__main__ import build_parser

    parse = lambda *a: build_parser().parse_args(["pretrain", "--modality", "image", *a])  # noqa: E731
    d = parse()
    assert (d.compile, d.num_workers, d.precision, d.accum_steps) == ("auto", None, "auto", None)
    d = parse("--compile", "--precision", "bf16", "--accum-steps", "16", "--num-workers", "4")
    assert (d.compile, d.precision, d.accum_steps, d.num_workers) == (True, "bf16", 16, 4)
    assert parse("--no-compile").compile is False
    with pytest.raises(SystemExit):
        parse("--precision", "fp8")
