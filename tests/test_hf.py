"""Parity with Hugging Face `transformers` Data2Vec{Audio,Vision,Text}Model (data2vec 1.0), offline.

Randomly initialised HF models of several configs, their weights perturbed away from the initial values (so
that a wrong mapping cannot hide behind identical inits: zero relative-position tables, unit LayerNorms, equal
layer scales), are converted; in eval mode, fp32 on CPU, the converted encoder must reproduce HF's
last_hidden_state and every entry of hidden_states within 1e-5. Round trips must be bit-exact.
Runtime: about 15 s of CPU time on 2 cores (most of it importing transformers and the speech models).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import transformers  # a test dependency (pip install -e '.[dev]'): parity is not optional
from einops import rearrange
from transformers import (Data2VecAudioConfig, Data2VecAudioForCTC, Data2VecAudioModel, Data2VecTextConfig,
                          Data2VecTextModel, Data2VecVisionConfig, Data2VecVisionForImageClassification,
                          Data2VecVisionModel)

from d2v_mini.config import TargetConfig
from d2v_mini.encoder import build_encoder
from d2v_mini.hf import from_transformers, load_pretrained, parity, teacher_targets, to_transformers
from d2v_mini.presets import preset

TOL = 1e-5
AUDIO = {  # HF's own tester config (odd kernel, groups 2), an even kernel with conv bias, a deeper one on SDPA
    "tester_odd_k5_g2": dict(hidden_size=16, conv_dim=(32, 32, 32), conv_stride=(4, 4, 4), conv_kernel=(8, 8, 8),
                             num_conv_pos_embeddings=2, conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2,
                             num_hidden_layers=3, num_attention_heads=2, intermediate_size=20),
    "even_k4_g4_bias": dict(hidden_size=32, conv_dim=(16, 24, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                            conv_bias=True, num_conv_pos_embeddings=3, conv_pos_kernel_size=4,
                            num_conv_pos_embedding_groups=4, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, layer_norm_eps=1e-6, mask_time_prob=0.0),
    "deep_k16_g3_sdpa": dict(hidden_size=24, conv_dim=(32, 32), conv_stride=(8, 4), conv_kernel=(16, 4),
                             num_conv_pos_embeddings=1, conv_pos_kernel_size=16, num_conv_pos_embedding_groups=3,
                             num_hidden_layers=8, num_attention_heads=3, intermediate_size=40,
                             attn_implementation="sdpa"),
}
VISION = {  # the released pretraining layout; the fine-tuned layout (per-layer bias, mean pooling); neither bias
    "shared_bias_ls": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                           image_size=16, patch_size=4, use_mask_token=True, use_shared_relative_position_bias=True,
                           use_mean_pooling=False, layer_scale_init_value=0.1, layer_norm_eps=1e-6),
    "per_layer_bias_meanpool": dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3, intermediate_size=32,
                                    image_size=24, patch_size=8, use_mask_token=True, use_relative_position_bias=True,
                                    use_absolute_position_embeddings=True, use_mean_pooling=True,
                                    layer_scale_init_value=0.0),
    "abs_pos_only_1ch": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                             image_size=32, patch_size=8, num_channels=1, use_absolute_position_embeddings=True,
                             use_mean_pooling=False, layer_scale_init_value=1e-5, attn_implementation="sdpa"),
}
TEXT = {
    "small_padded": dict(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=20, max_position_embeddings=22, type_vocab_size=1, layer_norm_eps=1e-5),
    "two_token_types": dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                            intermediate_size=48, max_position_embeddings=30, type_vocab_size=2),
}
CONFIGS = {**{("speech", k): v for k, v in AUDIO.items()}, **{("image", k): v for k, v in VISION.items()},
           **{("text", k): v for k, v in TEXT.items()}}
HF = {"speech": (Data2VecAudioConfig, Data2VecAudioModel), "image": (Data2VecVisionConfig, Data2VecVisionModel),
      "text": (Data2VecTextConfig, Data2VecTextModel)}


def perturb(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_model(modality: str, name: str, klass=None, **kw):
    conf, model = HF[modality]
    d = {"attn_implementation": "eager", **CONFIGS[modality, name]}
    return perturb((klass or model)(conf(**d), **kw))


def inputs(modality: str, model, seed: int = 1):
    """(x, padding_mask or None, mask or None) for a batch of 3."""
    g, c = torch.Generator().manual_seed(seed), model.config
    if modality == "speech":
        x = torch.randn(3, 1600, generator=g)
        pm = torch.zeros(3, 1600, dtype=torch.bool)
        pm[1, 1100:], pm[2, 700:] = True, True
        t = int(model._get_feat_extract_output_lengths(1600))
        return x, pm, torch.rand(3, t, generator=g) < 0.4
    if modality == "image":
        x = torch.randn(3, c.num_channels, c.image_size, c.image_size, generator=g)
        return x, None, torch.rand(3, (c.image_size // c.patch_size) ** 2, generator=g) < 0.4
    x = torch.randint(3, c.vocab_size - 1, (3, c.max_position_embeddings - 2), generator=g)
    x[1, 12:], x[2, 5:] = c.pad_token_id, c.pad_token_id
    pm = x.eq(c.pad_token_id)
    return x, pm, (torch.rand(x.shape, generator=g) < 0.3) & ~pm  # <mask> replaces tokens, never padding


def assert_parity(enc, hf, x, padding_mask=None, mask=None):
    """Independent of d2v_mini.hf.parity: call HF directly, compare every output."""
    with torch.no_grad():
        ours = enc(x, mask, padding_mask)
        if isinstance(hf, Data2VecAudioModel):
            attn = None if padding_mask is None else (~padding_mask).long()
            theirs = hf(x, attention_mask=attn, mask_time_indices=mask, output_hidden_states=True)
        elif isinstance(hf, Data2VecVisionModel):
            theirs = hf(x, bool_masked_pos=mask, output_hidden_states=True)
        else:
            tokens = x if mask is None else x.masked_fill(mask, enc.cfg.mask_idx)
            theirs = hf(tokens, attention_mask=tokens.ne(hf.config.pad_token_id).long(), output_hidden_states=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == hf.config.num_hidden_layers + 1
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, atol=TOL, rtol=0)
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("modality,name", list(CONFIGS), ids=[f"{m}-{n}" for m, n in CONFIGS])
def test_parity_hidden_states(modality, name):
    hf = hf_model(modality, name)
    enc = from_transformers(hf)
    assert not enc.training
    x, pm, mask = inputs(modality, hf)
    assert_parity(enc, hf, x)  # unpadded
    if pm is not None:
        assert_parity(enc, hf, x, padding_mask=pm)
    has_mask_emb = {"speech": lambda: hasattr(hf, "masked_spec_embed"), "image": lambda: hf.config.use_mask_token}
    if has_mask_emb.get(modality, lambda: True)():
        assert_parity(enc, hf, x, padding_mask=pm, mask=mask)
    d = parity(enc, hf, x, pm)
    assert max(d.values()) < TOL


@pytest.mark.parametrize("modality,name", list(CONFIGS), ids=[f"{m}-{n}" for m, n in CONFIGS])
def test_round_trip_hf_ours_hf_is_exact(modality, name):
    kw = {} if modality == "speech" else {"add_pooling_layer": True}  # pooler: kept aside and written back
    hf = hf_model(modality, name, **kw)
    back = to_transformers(from_transformers(hf))
    assert_same_state(hf.state_dict(), back.state_dict())


def test_round_trip_ours_hf_ours_is_exact(modality):
    cfg = preset(modality, "tiny").encoder
    enc = perturb(build_encoder(cfg), seed=3)
    hf = to_transformers(enc, attn_implementation="eager")
    x, pm, mask = inputs(modality, hf)
    if modality == "speech":
        x, pm, mask = x.repeat(1, 5), pm.repeat(1, 5), None  # the tiny preset's 20 ms frames need longer audio
    assert_parity(enc, hf, x, pm, mask)
    back = from_transformers(hf)
    assert back.cfg == enc.cfg
    assert_same_state(enc.state_dict(), back.state_dict())


@pytest.mark.parametrize("modality,name,breakage", [
    ("speech", "even_k4_g4_bias", "swap positional conv layers 0 and 1"),
    ("image", "shared_bias_ls", "transpose the relative position offsets (dy <-> dx)"),
    ("text", "two_token_types", "forget the token-type row"),
    ("text", "small_padded", "swap query and key of block 1"),
])
def test_a_wrong_mapping_fails_parity(modality, name, breakage):
    """The perturbed weights make each quirk load-bearing: getting one wrong is far outside the tolerance."""
    hf = hf_model(modality, name)
    enc = from_transformers(hf)
    with torch.no_grad():
        if modality == "speech":
            a, b = enc.pos_conv.convs[0], enc.pos_conv.convs[1]
            wa, ba = a.weight.clone(), a.bias.clone()
            a.weight.copy_(b.weight), a.bias.copy_(b.bias), b.weight.copy_(wa), b.bias.copy_(ba)
        elif modality == "image":
            n = 2 * enc.grid[0] - 1  # table rows: (dy, dx) offsets, row-major, then 3 CLS rows
            t = enc.rel_pos.table
            t[: n * n] = rearrange(t[: n * n], "(dy dx) h -> (dx dy) h", dy=n).clone()
        elif breakage.startswith("forget"):
            enc.positions.weight.copy_(hf.embeddings.position_embeddings.weight)
        else:
            attn = enc.transformer.blocks[1].attn
            q = attn.q.weight.clone()
            attn.q.weight.copy_(attn.k.weight), attn.k.weight.copy_(q)
    x, pm, _ = inputs(modality, hf)
    assert max(parity(enc, hf, x, pm).values()) > 1e-3


def test_changed_or_reloaded_text_encoder_exports_the_same_function():
    hf = hf_model("text", "two_token_types")
    enc = from_transformers(hf)
    x, pm, _ = inputs("text", hf)
    with torch.no_grad():  # "fine-tuned" after import: HF's original split cannot be restored
        enc.positions.weight.add_(0.01)
    out = to_transformers(enc, "eager")
    assert_parity(enc, out, x, pm)
    tt = out.embeddings.token_type_embeddings.weight
    assert torch.equal(tt[0], torch.zeros_like(tt[0]))  # type 0 is folded into the positions ...
    orig = hf.embeddings.token_type_embeddings.weight
    torch.testing.assert_close(tt[1], orig[1] - orig[0])  # ... type 1 keeps its offset to type 0
    reloaded = build_encoder(enc.cfg).eval()  # a checkpoint: the state dict only, no `hf_extra`
    reloaded.load_state_dict(enc.state_dict())
    out = to_transformers(reloaded, "eager")
    assert out.config.type_vocab_size == 1 and not out.embeddings.token_type_embeddings.weight.any()
    assert_parity(reloaded, out, x, pm)


def test_fine_tuned_task_models_give_their_encoder():
    ctc = perturb(Data2VecAudioForCTC(Data2VecAudioConfig(**AUDIO["tester_odd_k5_g2"], vocab_size=12)))
    enc = from_transformers(ctc)
    x, pm, _ = inputs("speech", ctc.data2vec_audio)
    assert_parity(enc, ctc.data2vec_audio, x, pm)
    cls = perturb(Data2VecVisionForImageClassification(Data2VecVisionConfig(**VISION["per_layer_bias_meanpool"],
                                                                            num_labels=5)))
    enc = from_transformers(cls)
    assert enc.cfg.final_norm is False and enc.cfg.rel_pos_bias == "per_layer"
    assert_parity(enc, cls.data2vec_vision, inputs("image", cls.data2vec_vision)[0])
    assert_same_state(cls.data2vec_vision.state_dict(), to_transformers(enc).state_dict())  # incl. pooler LN


@pytest.mark.parametrize("change,error", [
    ({"use_shared_relative_position_bias": True, "use_relative_position_bias": True}, NotImplementedError),
    ({"image_size": [16, 32]}, NotImplementedError),
    ({"hidden_act": "relu"}, NotImplementedError),
])
def test_unrepresentable_vision_configs_raise(change, error):
    with pytest.raises(error, match="d2v_mini"):
        from_transformers(Data2VecVisionModel(Data2VecVisionConfig(**{**VISION["shared_bias_ls"], **change})))


def test_unrepresentable_audio_and_foreign_configs_raise():
    with pytest.raises(NotImplementedError, match="add_adapter"):
        from_transformers(Data2VecAudioModel(Data2VecAudioConfig(**AUDIO["tester_odd_k5_g2"], add_adapter=True)))
    with pytest.raises(ValueError, match="data2vec 1.0"):
        from_transformers(transformers.BertModel(transformers.BertConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)))


def test_load_pretrained_offline_fails_clearly(monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="needs internet access") as err:
        load_pretrained("facebook/data2vec-audio-base", cache_dir=tmp_path / "empty")
    assert "offline mode is on" in str(err.value) and "hf download" in str(err.value)


def test_load_pretrained_from_a_local_fine_tuned_checkpoint(monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ctc = perturb(Data2VecAudioForCTC(Data2VecAudioConfig(**AUDIO["tester_odd_k5_g2"], vocab_size=12)))
    ctc.save_pretrained(tmp_path)
    enc = load_pretrained(str(tmp_path))
    assert not enc.training
    assert_parity(enc, ctc.data2vec_audio, *inputs("speech", ctc.data2vec_audio)[:2])


def _tap(modules):
    """Record each module's output (HF's FFN output before the residual, the data2vec 1.0 target site)."""
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: seen.append(o)) for m in modules]
    return seen, hooks


def test_teacher_targets_match_hf_layers():
    # speech: top-K FFN outputs (HF feed_forward.output_dense), instance norm over each utterance's valid frames
    hf = hf_model("speech", "deep_k16_g3_sdpa")
    enc = from_transformers(hf)
    x, pm, _ = inputs("speech", hf)
    y = teacher_targets(enc, x, None, pm)  # None: the released base recipe, top 8 of the 8 blocks
    seen, hooks = _tap([layer.feed_forward.output_dense for layer in hf.encoder.layers])
    with torch.no_grad():
        hf(x, attention_mask=(~pm).long())
    [h.remove() for h in hooks]
    lengths = hf._get_feat_extract_output_lengths((~pm).sum(1))
    for b, n in enumerate(lengths.tolist()):
        per_layer = [(a[b, :n] - a[b, :n].mean(0)) / (a[b, :n].var(0, unbiased=False) + 1e-5).sqrt() for a in seen]
        torch.testing.assert_close(y[b, :n], torch.stack(per_layer).mean(0), atol=TOL, rtol=0)
    # images: top-K block outputs without CLS, layer norm, average, layer norm again (the released vision code)
    hf = hf_model("image", "abs_pos_only_1ch")
    x = inputs("image", hf)[0]
    y = teacher_targets(from_transformers(hf), x, TargetConfig(top_k=3, layer_norm="layer", final_norm="layer",
                                                                site="end"))
    with torch.no_grad():
        hs = hf(x, output_hidden_states=True).hidden_states
    ref = torch.stack([F.layer_norm(h[:, 1:], h.shape[-1:]) for h in hs[-3:]]).mean(0)
    torch.testing.assert_close(y, F.layer_norm(ref, ref.shape[-1:]), atol=TOL, rtol=0)
    # text: top-K FFN outputs (HF output.dense), layer norm, average
    hf = hf_model("text", "two_token_types")
    x, pm, _ = inputs("text", hf)
    y = teacher_targets(from_transformers(hf), x, TargetConfig(top_k=2, layer_norm="layer", site="ffn"))
    seen, hooks = _tap([layer.output.dense for layer in hf.encoder.layer])
    with torch.no_grad():
        hf(x, attention_mask=(~pm).long())
    [h.remove() for h in hooks]
    ref = torch.stack([F.layer_norm(a, a.shape[-1:]) for a in seen[-2:]]).mean(0)
    torch.testing.assert_close(y, ref, atol=TOL, rtol=0)
