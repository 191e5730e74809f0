"""The pretraining engine: exact resume, atomic checkpoints, the stops on a non-finite loss and on a
collapsed teacher, EMA steps with gradient accumulation, weight decay groups, LR schedules, precision.

All on CPU with a 2-block image encoder on synthetic tensors (tests/ddp_worker.py). Runtime ~10 s.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from d2v_mini.config import OptimConfig, override
from d2v_mini.data2vec import Data2Vec
from d2v_mini.ema import ema_decay
from d2v_mini.presets import preset
from d2v_mini.schedule import build_optimizer, build_scheduler, param_groups
from d2v_mini.train import (CollapseError, NonFiniteLossError, TrainOptions, load_checkpoint, pretrain,
                            resolve_precision)
from tests.ddp_worker import synthetic_images, tiny_cfg


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model gains nothing from intra-op threads; on a loaded 2-core machine 2 threads ran 40x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def opts(tmp_path, name="run", **kw) -> TrainOptions:
    return TrainOptions(out_dir=str(tmp_path / name), device="cpu", progress=False, **kw)


# ------------------------------------------------------------------------------------------ resume
def test_resume_is_exact(tmp_path):
    """12 steps straight == 6 steps, stop, resume to 12: same per-step losses, same final weights.
    Accumulation 2 over 40 items (5 steps per epoch), so the stop is mid-epoch and the masks, drawn by
    the model from the trainer's generator, must continue from the restored RNG state."""
    cfg, data = tiny_cfg(**{"optim.accum_steps": 2}), synthetic_images(40)
    straight = pretrain(cfg, data, opts=opts(tmp_path, "straight", steps=12, log_every=1))
    first = pretrain(cfg, data, opts=opts(tmp_path, "resumed", steps=6, log_every=1))
    ck = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert ck["state"]["step"] == 6 and ck["state"]["epoch"] == 1 and ck["state"]["sample"] == 8  # 48 samples
    second = pretrain(cfg, data, opts=opts(tmp_path, "resumed", steps=12, log_every=1, resume=True))

    losses = [h["loss"] for h in straight.history]
    assert len(set(losses)) == 12  # the run moves: a resume that replayed batches could not match
    assert [h["loss"] for h in first.history + second.history] == losses
    assert [h["step"] for h in second.history] == list(range(7, 13))
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resume"
    assert int(second.model.teacher.num_updates) == 12
    lines = [json.loads(ln) for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == list(range(1, 13))

    loaded = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert isinstance(loaded, Data2Vec) and not loaded.training
    assert all(torch.equal(v, b[k]) for k, v in loaded.state_dict().items())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint intact and no temporary file."""
    cfg, data = tiny_cfg(), synthetic_images(16)
    pretrain(cfg, data, opts=opts(tmp_path, steps=2))
    path = tmp_path / "run" / "checkpoint.pt"
    before = path.read_bytes()

    def dying_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        pretrain(cfg, data, opts=opts(tmp_path, steps=4, resume=True))
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["state"]["step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


# ------------------------------------------------------------------------------------------ guards
def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    """A NaN weight in the regression head (NaN inputs are now refused at the model's entry, see
    test_reliability.py): the check at the log step (5) names step 1, and no checkpoint is written."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    with torch.no_grad():
        model.head.net.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 1 .*learning rate"):
        pretrain(cfg, synthetic_images(16), opts=opts(tmp_path, steps=8, log_every=5), model=model)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_collapse_guard_fires_after_after_steps(tmp_path):
    """A target-variance threshold above what the targets have (their std is ~1) fires at the first
    step past `after_steps`; a prediction-variance threshold is reported as such."""
    data = synthetic_images(16)
    cfg = tiny_cfg(**{"guard.min_target_var": 5.0, "guard.min_pred_var": 0.0, "guard.after_steps": 3})
    with pytest.raises(CollapseError, match=r"teacher collapsed at step 4: target_var 0\.\d+ < min_target_var 5"):
        pretrain(cfg, data, opts=opts(tmp_path, "t", steps=10, log_every=1))
    cfg = tiny_cfg(**{"guard.min_target_var": 0.0, "guard.min_pred_var": 5.0, "guard.after_steps": 0})
    with pytest.raises(CollapseError, match=r"at step 1: pred_var .* < min_pred_var 5"):
        pretrain(cfg, data, opts=opts(tmp_path, "p", steps=10, log_every=1))


def test_collapse_guard_disabled_by_zero_thresholds(tmp_path):
    cfg = tiny_cfg(**{"guard.min_target_var": 0.0, "guard.min_pred_var": 0.0, "guard.after_steps": 0})
    res = pretrain(cfg, synthetic_images(16), opts=opts(tmp_path, steps=3, log_every=1))
    assert len(res.history) == 3 and res.history[-1]["target_var"] < 5.0


# ------------------------------------------------------------------------------- EMA, accumulation
def test_ema_steps_once_per_optimizer_step_with_accumulation(tmp_path):
    """accum 4: the teacher is updated 5 times in 5 steps (not 20), with tau annealed per update, and
    the step equals the unaccumulated one on the same global batch (same precomputed masks)."""
    data = synthetic_images(16, masks=True)
    acc = pretrain(tiny_cfg(**{"optim.accum_steps": 4}), data, opts=opts(tmp_path, "acc", steps=5, log_every=1))
    one = pretrain(tiny_cfg(), data, opts=opts(tmp_path, "one", steps=5, log_every=1))
    cfg = tiny_cfg()
    assert int(acc.model.teacher.num_updates) == 5
    assert [h["ema_decay"] for h in acc.history] == [ema_decay(s, cfg.ema) for s in range(5)]
    assert acc.model.teacher.decay == pytest.approx(ema_decay(5, cfg.ema))
    torch.testing.assert_close([h["loss"] for h in acc.history], [h["loss"] for h in one.history], rtol=1e-5, atol=0)
    a, b = acc.model.state_dict(), one.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    assert acc.model.teacher.model.transformer.blocks[0].fc1.weight.dtype == torch.float32


# ------------------------------------------------------------------------------ optimiser, schedule
def test_no_1d_groups_skip_norms_biases_and_tokens():
    """decay_groups="no_1d" (the groups before the released ones, kept as an option)."""
    model = Data2Vec(tiny_cfg())
    groups = param_groups(model, 0.05, "no_1d")
    decay = {id(p) for p in groups[0]["params"]}
    names = {n: id(p) in decay for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("teacher.") for n in names)
    assert sum(len(g["params"]) for g in groups) == len(names) == sum(p.requires_grad for p in model.parameters())
    for n, decayed in names.items():
        undecayed = (n.endswith(".bias") or "norm" in n or "gamma" in n or "token" in n or "rel_pos" in n or "pos_embed" in n)
        assert decayed != undecayed, n
    # with zero gradients AdamW only applies decoupled decay: w <- w (1 - lr wd), the rest stays put
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, decay_groups="no_1d")
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    for n, p in model.named_parameters():
        if n in names:
            factor = 1 - 0.1 * 0.5 if names[n] else 1.0
            torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)


def decayed_names(modality: str, rule: str = "released") -> tuple[set[str], set[str]]:
    """(decayed, all trainable) parameter names of the tiny preset's Data2Vec, as build_optimizer groups them."""
    model = Data2Vec(preset(modality, "tiny"))
    opt = build_optimizer(model, override(model.cfg.optim, decay_groups=rule))
    name = {id(p): n for n, p in model.named_parameters()}
    decayed = {name[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    return decayed, {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("modality", ["speech", "text"])
def test_released_groups_fairseq_decays_every_parameter(modality):
    """fairseq's Adam has one group: norms, biases, embeddings, mask_emb and the head all decay."""
    decayed, trainable = decayed_names(modality)
    assert decayed == trainable and not any(n.startswith("teacher.") for n in trainable)
    assert {"student.transformer.blocks.0.norm1.weight", "student.transformer.blocks.0.fc1.bias"} <= decayed
    assert ("student.mask_emb" if modality == "speech" else "student.positions.weight") in decayed


def test_released_groups_image_follow_beit():
    """BEiT get_parameter_groups: no decay for 1-D params, biases and no_weight_decay() = {pos_embed,
    cls_token}; 2-D+ tokens and tables (mask_token, the relative position table) do decay."""
    decayed, trainable = decayed_names("image")
    beit = {n for n in trainable if not (n.endswith(".bias") or n in ("student.cls_token", "student.pos_embed")
                                         or "norm" in n or "gamma" in n)}
    assert decayed == beit
    assert {"student.mask_token", "student.rel_pos.table", "student.patch_embed.weight", "head.net.weight"} <= decayed
    assert not decayed & {"student.cls_token", "student.pos_embed", "student.transformer.blocks.0.gamma1"}
    old, _ = decayed_names("image", "no_1d")
    assert old == beit - {"student.mask_token", "student.rel_pos.table"}


def test_unknown_decay_groups_are_explained():
    # since issue 10 the config itself refuses it when built (ConfigError, a ValueError)
    with pytest.raises(ValueError, match="decay_groups must be 'released' or 'no_1d'"):
        decayed_names("text", "bias_only")


def lrs(cfg: OptimConfig, steps: list[int]) -> dict[int, float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, out = build_scheduler(opt, cfg), {}
    for s in range(max(steps) + 1):
        if s in steps:
            out[s] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_closed_form():
    cfg = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    got = lrs(cfg, [0, 5, 10, 35, 60, 110, 150])
    cos = lambda s: 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 100))  # noqa: E731
    want = {0: 0.0, 5: 5e-4, 10: 1e-3, 35: cos(35), 60: 5.5e-4, 110: 1e-4, 150: 1e-4}
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("decay", ["exponential", "linear"])
def test_tri_stage_schedule_closed_form(decay):
    """fairseq: 1% -> 100% over 10% of the steps, hold 40%, decay over 50% to 1%, then 1%."""
    cfg = OptimConfig(lr=1e-3, schedule="tri_stage", total_steps=1000, tri_stage_ratios=(0.1, 0.4, 0.5),
                      tri_stage_decay=decay, warmup_steps=999)  # warmup_steps is ignored by tri_stage
    got = lrs(cfg, [0, 50, 100, 499, 500, 750, 1000, 1200])
    mid = 1e-3 * (math.exp(math.log(0.01) * 0.5) if decay == "exponential" else 1 - 0.99 * 0.5)  # 1e-4 / 5.05e-4
    want = {0: 1e-5, 50: 1e-5 + 0.99e-3 * 0.5, 100: 1e-3, 499: 1e-3, 500: 1e-3, 750: mid, 1000: 1e-5, 1200: 1e-5}
    assert got == pytest.approx(want, rel=1e-9)


def test_speech_base_tri_stage_peaks_after_12k_steps():
    cfg = preset("speech", "base").optim
    got = lrs(override(cfg, total_steps=4000), [0, 120, 3720, 4000])  # same ratios on 1% of the steps
    assert got == pytest.approx({0: 5e-6, 120: 5e-4, 3720: 5e-4, 4000: 5e-6})


# -------------------------------------------------------------------------------------- precision
def test_precision_choice_and_bf16_on_cpu(tmp_path):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp8", torch.device("cpu"))
    res = pretrain(tiny_cfg(), synthetic_images(16), opts=opts(tmp_path, steps=2, precision="bf16", log_every=1))
    assert all(math.isfinite(h["loss"]) for h in res.history)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())  # autocast: fp32 weights, EMA in fp32


def test_bad_batch_size_and_batch_type_are_explained(tmp_path):
    with pytest.raises(ValueError, match="divisible by world size 1 x accum_steps 3"):
        pretrain(tiny_cfg(**{"optim.accum_steps": 3}), synthetic_images(16), opts=opts(tmp_path, steps=1))
    with pytest.raises(ValueError, match="too few for one micro-batch"):
        pretrain(tiny_cfg(), synthetic_images(4), opts=opts(tmp_path, steps=1))
    with pytest.raises(TypeError, match="dict with 'source'"):
        pretrain(tiny_cfg(), [torch.zeros(3, 32, 32)] * 16, opts=opts(tmp_path, steps=1))
