"""EMA teacher, target builder and loss: each asserts what the recipe means, not just shapes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from d2v_mini.config import EMAConfig, LossConfig, TargetConfig, override
from d2v_mini.data2vec import Data2Vec
from d2v_mini.ema import EMATeacher, ema_decay
from d2v_mini.encoder import build_encoder
from d2v_mini.loss import feature_std, regression_loss
from d2v_mini.presets import preset
from d2v_mini.targets import build_targets, instance_norm

from .conftest import tiny_batch


# ------------------------------------------------------------------------------------------- EMA
def test_decay_schedule_is_linear_then_constant():
    cfg = EMAConfig(decay_start=0.999, decay_end=0.9999, anneal_steps=30_000)
    assert ema_decay(0, cfg) == 0.999
    assert ema_decay(15_000, cfg) == pytest.approx(0.99945)
    assert ema_decay(30_000, cfg) == ema_decay(10**6, cfg) == 0.9999
    const = EMAConfig(decay_start=0.9998, decay_end=0.9998, anneal_steps=0)  # data2vec-vision
    assert ema_decay(0, const) == ema_decay(5000, const) == 0.9998


def test_teacher_is_a_fresh_fp32_copy_without_gradients():
    student = build_encoder(preset("speech", "tiny"))
    teacher = EMATeacher(student, EMAConfig())
    assert teacher.model is not student
    for (n, s), (_, t) in zip(student.named_parameters(), teacher.model.named_parameters()):
        assert torch.equal(s, t) and t.data_ptr() != s.data_ptr(), n
        assert not t.requires_grad and t.dtype == torch.float32
    teacher.train()
    assert not teacher.model.training  # never leaves eval mode (no dropout, no layer drop)


@pytest.mark.parametrize("modality", ["speech", "text", "image"])
def test_ema_moves_by_exactly_the_annealed_tau_after_an_optimizer_step(modality):
    cfg = override(preset(modality, "tiny"), **{"ema.decay_start": 0.9, "ema.decay_end": 0.99, "ema.anneal_steps": 10})
    model = Data2Vec(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, pm = tiny_batch(modality)
    for step in range(3):
        before = {n: p.clone() for n, p in model.teacher.model.named_parameters()}
        out = model(x, pm, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        tau = model.ema_step()
        assert tau == pytest.approx(0.9 + 0.09 * step / 10)
        student = dict(model.student.named_parameters())
        moved = 0
        for n, t in model.teacher.model.named_parameters():
            if model.student.group_of(n) in cfg.ema.shared:  # shared parts are copied (fairseq skip keys)
                assert torch.equal(t, student[n]), n
            else:
                expected = tau * before[n] + (1 - tau) * student[n]
                torch.testing.assert_close(t, expected, atol=1e-6, rtol=1e-5)
                moved += int(not torch.equal(t, before[n]))
        assert moved > 0
    assert int(model.teacher.num_updates) == 3


def test_teacher_frozen_when_tau_end_is_one():
    student = build_encoder(preset("text", "tiny"))
    teacher = EMATeacher(student, EMAConfig(decay_start=1.0, decay_end=1.0, anneal_steps=0, shared=()))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.model.parameters()]
    teacher.step(student)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.model.parameters()))


# --------------------------------------------------------------------------------------- targets
def test_instance_norm_makes_each_channel_zero_mean_unit_var_over_time():
    x = torch.randn(3, 50, 8) * torch.arange(1, 9) + 5 * torch.arange(8)  # channels with different scales
    y = instance_norm(x)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(3, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones(3, 8), atol=1e-3, rtol=0)
    torch.testing.assert_close(y, F.instance_norm(x.transpose(1, 2)).transpose(1, 2))  # time axis, not channels
    assert not torch.allclose(y.mean(dim=2), torch.zeros(3, 50), atol=1e-3)  # it is NOT a per-frame norm


def test_instance_norm_ignores_padding():
    x = torch.randn(2, 40, 4)
    pm = torch.zeros(2, 40, dtype=torch.bool)
    pm[1, 25:] = True
    x[1, 25:] = 1000.0  # garbage in the pads must not move the statistics
    y = instance_norm(x, pm)
    torch.testing.assert_close(y[1, :25], instance_norm(x[1:2, :25])[0], atol=1e-5, rtol=1e-5)
    assert (y[1, 25:] == 0).all()


def test_targets_average_top_k_normalised_layers():
    layers = [torch.randn(2, 10, 6) * (i + 1) + i for i in range(4)]
    y = build_targets(layers[-3:], TargetConfig(top_k=3, layer_norm="layer", final_norm="none"))
    ref = sum(F.layer_norm(t, (6,)) for t in layers[-3:]) / 3
    torch.testing.assert_close(y, ref)
    y2 = build_targets(layers, TargetConfig(top_k=4, layer_norm="layer", final_norm="layer"))
    torch.testing.assert_close(y2.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)  # vision's final LN
    assert build_targets([layers[0].half()], TargetConfig(top_k=1)).dtype == torch.float32  # fp32 targets


def test_target_site_ffn_vs_end_of_block():
    model = Data2Vec(override(preset("text", "tiny"), **{"targets.site": "end", "targets.layer_norm": "none"}))
    x, _ = tiny_batch("text")
    out = model.teacher.model(x)
    from d2v_mini.targets import target_layers
    end = target_layers(out, model.cfg.targets)
    assert all(a is b for a, b in zip(end, out.hidden_states[-3:]))
    ffn = target_layers(out, override(model.cfg.targets, site="ffn"))
    assert all(a is b for a, b in zip(ffn, out.layer_results[-3:]))


def test_pre_ln_ffn_targets_are_read_after_layer_scale():
    """Vision base_paper (site "ffn", pre-LN, layer scale): the target of block l is data2vec-vision's
    fc_feature = gamma_2 * MLP(LN(x)), the branch added to the residual. With per-channel gammas that are
    not all equal (as after training) the layer-normed targets differ from those of the unscaled MLP."""
    cfg = override(preset("image", "base_paper"), **{
        "encoder.dim": 32, "encoder.depth": 3, "encoder.heads": 2, "encoder.ffn_dim": 64, "encoder.image_size": 32,
        "encoder.patch_size": 8, "encoder.drop_path": 0.0, "encoder.attn_dropout": 0.0, "targets.top_k": 2,
        "masking.num_patches": 6, "masking.min_block": 2})  # a 4 x 4 patch grid (checked since issue 10)
    assert cfg.targets.site == "ffn" and cfg.encoder.norm_first and cfg.encoder.layer_scale_init > 0
    model = Data2Vec(cfg)
    enc = model.teacher.model
    with torch.no_grad():
        for block in enc.transformer.blocks:
            block.gamma1.uniform_(0.5, 1.5)
            block.gamma2.uniform_(0.1, 2.0)
    img = torch.randn(2, 3, 32, 32)
    out = enc(img)
    bias = enc.rel_pos()[None]
    branch, unscaled = [], []  # what each block adds to its residual after attention; the MLP before gamma_2
    for i, block in enumerate(enc.transformer.blocks):
        h_in = out.hidden_states[i]
        mid = h_in + block.gamma1 * block.attn(block.norm1(h_in), bias)
        branch.append(out.hidden_states[i + 1] - mid)
        unscaled.append(block.ffn(block.norm2(mid)))
        torch.testing.assert_close(out.layer_results[i], branch[i], atol=1e-5, rtol=1e-5)
    from d2v_mini.targets import target_layers
    y = build_targets([t[:, 1:] for t in target_layers(out, cfg.targets)], cfg.targets)  # top 2, LN, average
    released = sum(F.layer_norm(t[:, 1:], (32,)) for t in branch[1:]) / 2
    torch.testing.assert_close(y, released, atol=1e-4, rtol=1e-4)
    before_scale = sum(F.layer_norm(t[:, 1:], (32,)) for t in unscaled[1:]) / 2
    assert (y - before_scale).abs().max() > 0.1


# ------------------------------------------------------------------------------------------ loss
def test_l2_loss_scaled_by_inverse_sqrt_d_per_masked_position():
    pred, y = torch.zeros(5, 16), torch.ones(5, 16)
    assert regression_loss(pred, y, LossConfig(beta=0)).item() == pytest.approx(16 / math.sqrt(16))
    assert regression_loss(pred, y, LossConfig(beta=0, scale=1.0)).item() == pytest.approx(16)
    # Smooth-L1 with beta 4 on |d| = 1: 0.5 * d^2 / beta = 0.125 per element, summed over D (text: scale 1)
    assert regression_loss(pred, y, LossConfig(beta=4, scale=1.0)).item() == pytest.approx(16 * 0.125)
    # BEiT: mean over every element, beta 2: |d| = 1 -> 0.25
    assert regression_loss(pred, y, LossConfig(beta=2, reduction="mean")).item() == pytest.approx(0.25)


def test_feature_std_is_fairseq_compute_var():
    y = torch.randn(1000, 8) * torch.arange(1, 9)
    assert feature_std(y).item() == pytest.approx(torch.arange(1, 9).float().mean().item(), rel=0.1)
    assert feature_std(torch.ones(100, 8)).item() < 0.01  # a collapsed teacher


def test_loss_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        regression_loss(torch.zeros(3, 4), torch.zeros(3, 5), LossConfig())
