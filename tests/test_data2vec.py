"""The whole data2vec 1.0 step: what the teacher sees, where the loss lives, and that a tiny model learns."""
from __future__ import annotations

import pytest
import torch

from d2v_mini.config import override
from d2v_mini.data2vec import Data2Vec
from d2v_mini.presets import preset

from .conftest import fit_fixed_batch, tiny_batch


def _capture_teacher_inputs(model):
    seen = {}
    model.teacher.model.register_forward_pre_hook(lambda m, a, kw: seen.setdefault("forward", (a, kw)),
                                                  with_kwargs=True)
    orig = model.teacher.model.forward_features

    def spy(features, mask=None, padding_mask=None):
        seen["features"], seen["mask"] = features, mask
        return orig(features, mask, padding_mask)

    model.teacher.model.forward_features = spy
    return seen


def test_teacher_sees_the_unmasked_input(modality):
    model = Data2Vec(preset(modality, "tiny"))
    seen = _capture_teacher_inputs(model)
    x, pm = tiny_batch(modality)
    out = model(x, pm, generator=torch.Generator().manual_seed(0))
    assert out.mask.any() and seen["mask"] is None  # the teacher's encoder got no mask
    if modality == "speech":  # teacher reuses the student's pre-mask features (fairseq ema_transformer_only)
        clean, _ = model.student.embed(x, pm)
        torch.testing.assert_close(seen["features"], clean)
    else:  # the teacher runs on the original, uncorrupted source
        args, kw = seen["forward"]
        assert torch.equal(args[0], x)
        if modality == "text":
            assert not (args[0] == model.cfg.encoder.mask_idx).any()


def test_teacher_gets_no_gradients(modality):
    model = Data2Vec(preset(modality, "tiny"))
    x, pm = tiny_batch(modality)
    model(x, pm).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())


def test_loss_counts_only_masked_positions(modality):
    model = Data2Vec(preset(modality, "tiny"))
    x, pm = tiny_batch(modality)
    grads = {}

    def keep_grad(module, inputs, output):
        output[0].retain_grad()
        grads["h"] = output[0]

    model.student.transformer.register_forward_hook(keep_grad)
    out = model(x, pm, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    g = grads["h"].grad.abs().sum(-1)  # [B, T]: gradient reaching each position of the last block
    if model.student.has_cls:
        g = g[:, 1:]
    assert out.pred.shape[0] == out.target.shape[0] == int(out.mask.sum()) == out.num_masked
    assert (g[out.mask] > 0).all()  # every masked position is regressed ...
    assert (g[~out.mask] == 0).all()  # ... and nothing else


def test_text_loss_on_mask_tokens_only_unless_asked():
    cfg = override(preset("text", "tiny"), **{"masking.prob": 0.3, "masking.length": 1,
                                               "masking.random_token_prob": 0.2, "masking.leave_unmasked_prob": 0.2})
    x, _ = tiny_batch("text", batch=8)
    seen = {}
    model = Data2Vec(cfg)
    model.student.tokens.register_forward_pre_hook(lambda m, a: seen.setdefault("tokens", a[0]))
    out = model(x, generator=torch.Generator().manual_seed(0))
    # released fairseq behaviour: the loss covers exactly the positions whose input token is <mask>
    assert torch.equal(out.mask, seen["tokens"] == cfg.encoder.mask_idx)
    seen.clear()
    model_all = Data2Vec(override(cfg, **{"masking.loss_on_all_selected": True}))
    model_all.student.tokens.register_forward_pre_hook(lambda m, a: seen.setdefault("tokens", a[0]))
    out_all = model_all(x, generator=torch.Generator().manual_seed(0))
    changed_or_masked = out_all.mask & (seen["tokens"] != cfg.encoder.mask_idx)
    assert changed_or_masked.any()  # the random / unchanged 20% + 20% are now in the loss too
    assert (seen["tokens"] == cfg.encoder.mask_idx)[~out_all.mask].sum() == 0


def test_speech_padding_is_never_a_target():
    model = Data2Vec(preset("speech", "tiny"))
    wav = torch.randn(2, 16000)
    pm = torch.zeros(2, 16000, dtype=torch.bool)
    pm[1, 8000:] = True
    out = model(wav, pm, generator=torch.Generator().manual_seed(0))
    valid = model.student.feature_encoder.output_length(8000)
    assert not out.mask[1, valid:].any() and out.mask[1, :valid].any()


def test_statistics_reported(modality):
    model = Data2Vec(preset(modality, "tiny"))
    x, pm = tiny_batch(modality)
    s = model(x, pm).stats()
    assert set(s) >= {"loss", "target_var", "pred_var", "ema_decay"}
    assert s["target_var"] > 0.1 and s["ema_decay"] == model.cfg.ema.decay_start


@pytest.mark.parametrize("modality", ["speech", "image", "text"])
def test_tiny_model_loss_falls_on_a_fixed_batch(modality):
    torch.manual_seed(0)
    cfg = preset(modality, "tiny")
    model = Data2Vec(cfg)
    x, pm = tiny_batch(modality, batch=8)
    losses = fit_fixed_batch(model, x, pm, steps=40)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, f"{modality}: loss {first:.3f} -> {last:.3f}"  # image: 0.275 -> 0.225
