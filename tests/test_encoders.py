"""The encoder contract, the block forms, and what each front end does with masks and padding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d2v_mini.encoder import build_encoder
from d2v_mini.modalities.image import RelativePositionBias
from d2v_mini.presets import preset

from .conftest import tiny_batch


def test_contract_hidden_states_and_layer_results(modality):
    cfg = preset(modality, "tiny")
    enc = build_encoder(cfg).eval()
    x, pm = tiny_batch(modality)
    out = enc(x, padding_mask=pm)
    depth = cfg.encoder.depth
    assert len(out.hidden_states) == depth + 1 and len(out.layer_results) == depth
    B, T, D = out.last_hidden_state.shape
    assert D == cfg.encoder.dim and all(h.shape == (B, T, D) for h in out.hidden_states + out.layer_results)
    blocks = enc.transformer.blocks
    for i, block in enumerate(blocks):
        h_in, h_out, ffn = out.hidden_states[i], out.hidden_states[i + 1], out.layer_results[i]
        if cfg.encoder.norm_first:  # pre-LN: out = mid + gamma2 * ffn(LN(mid)), mid = in + gamma1 * attn(LN(in))
            mid = h_in + block.gamma1 * block.attn(block.norm1(h_in), enc.rel_pos()[None])
            # the target site is the FFN branch after layer scale (data2vec-vision fc_feature)
            torch.testing.assert_close(ffn, block.gamma2 * block.ffn(block.norm2(mid)), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h_out, mid + ffn, atol=1e-5, rtol=1e-5)
        else:  # post-LN: the target site is fc2's output before the residual and final LN
            mid = block.norm1(h_in + block.attn(h_in))
            torch.testing.assert_close(ffn, block.ffn(mid), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h_out, block.norm2(mid + ffn), atol=1e-5, rtol=1e-5)
    if cfg.encoder.norm_first:  # vision: the last hidden state is the final LN of the last block output
        torch.testing.assert_close(out.last_hidden_state, enc.norm(out.hidden_states[-1]))
    else:
        torch.testing.assert_close(out.last_hidden_state, out.hidden_states[-1])


def test_speech_frames_and_mask_embedding():
    enc = build_encoder(preset("speech", "tiny")).eval()
    wav, _ = tiny_batch("speech", batch=2)
    feats, _ = enc.embed(wav)
    assert feats.shape[1] == enc.feature_encoder.output_length(8000) == 24  # 20 ms hop: 8000 samples -> 24 frames
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[:, 5:15] = True
    captured = {}
    enc.pos_conv.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    enc.forward_features(feats, mask)
    x = captured["x"]  # the input of the positional encoder: mask_emb at masked frames, features elsewhere
    assert torch.equal(x[mask], enc.mask_emb.expand(int(mask.sum()), -1))
    assert torch.equal(x[~mask], feats[~mask])


def test_speech_padding_downsampled_and_zeroed():
    enc = build_encoder(preset("speech", "tiny")).eval()
    wav = torch.randn(2, 8000)
    pm = torch.zeros(2, 8000, dtype=torch.bool)
    pm[1, 4000:] = True
    feats, frame_pm = enc.embed(wav, pm)
    n_valid = enc.feature_encoder.output_length(4000)
    assert frame_pm[0].sum() == 0 and (~frame_pm[1]).sum() == n_valid
    captured = {}
    enc.pos_conv.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    enc.forward_features(feats, None, frame_pm)
    assert captured["x"][1, n_valid:].abs().sum() == 0  # pads are zeroed before the conv positions


def test_speech_even_positional_kernel_keeps_length():
    cfg = preset("speech", "tiny").encoder
    cfg.conv_pos_kernel = 8
    enc = build_encoder(cfg).eval()
    out = enc(torch.randn(1, 8000))
    assert out.last_hidden_state.shape[1] == 24


def test_image_mask_token_and_cls():
    enc = build_encoder(preset("image", "tiny")).eval()
    img, _ = tiny_batch("image", batch=2)
    mask = torch.zeros(2, enc.num_patches, dtype=torch.bool)
    mask[0, :10] = True
    out = enc(img, mask)
    emb = out.hidden_states[0]  # [CLS] + patches (+ absolute positions if the preset has them), before the blocks
    assert emb.shape[1] == enc.num_patches + 1
    if enc.pos_embed is not None:
        emb = emb - enc.pos_embed
    assert torch.allclose(emb[:, 0], enc.cls_token[0, 0].expand(2, -1))
    assert torch.allclose(emb[:, 1:][mask], enc.mask_token[0].expand(int(mask.sum()), -1))
    patches, _ = enc.embed(img)
    assert torch.allclose(emb[:, 1:][~mask], patches[~mask])


def test_relative_position_bias_is_translation_invariant():
    rp = RelativePositionBias((4, 4), heads=2)
    torch.nn.init.normal_(rp.table)
    bias = rp()  # [H, 17, 17]
    idx = lambda i, j: 1 + i * 4 + j  # noqa: E731  token index of patch (i, j)
    # the same 2-D offset (+1 row, +2 cols) gives the same bias anywhere on the grid
    torch.testing.assert_close(bias[:, idx(0, 0), idx(1, 2)], bias[:, idx(2, 1), idx(3, 3)])
    assert not torch.allclose(bias[:, idx(0, 0), idx(1, 2)], bias[:, idx(0, 0), idx(2, 1)])
    # CLS rows and columns use their own three table entries
    assert torch.equal(bias[:, 0, 1], bias[:, 0, 5]) and torch.equal(bias[:, 1, 0], bias[:, 7, 0])
    assert len({bias[0, 0, 1].item(), bias[0, 1, 0].item(), bias[0, 0, 0].item()}) == 3
    assert rp.table.shape[0] == (2 * 4 - 1) ** 2 + 3


def test_text_positions_offset_and_padding_invariance():
    cfg = preset("text", "tiny")
    enc = build_encoder(cfg).eval()
    tokens, _ = tiny_batch("text", batch=1)
    padded = torch.cat([tokens, torch.full((1, 8), cfg.encoder.pad_idx)], dim=1)
    captured = []
    enc.positions.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    a, b = enc(tokens), enc(padded)
    assert captured[0][0, 0].item() == cfg.encoder.pad_idx + 1  # RoBERTa: positions start at pad + 1
    assert (captured[1][0, 32:] == cfg.encoder.pad_idx).all()  # pads use the padding position
    assert b.padding_mask is not None and b.padding_mask[0, 32:].all()
    torch.testing.assert_close(b.last_hidden_state[:, :32], a.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_text_mask_argument_means_mask_token():
    cfg = preset("text", "tiny")
    enc = build_encoder(cfg).eval()
    tokens, _ = tiny_batch("text", batch=2)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 3:7] = True
    a = enc(tokens, mask).last_hidden_state
    b = enc(tokens.masked_fill(mask, cfg.encoder.mask_idx)).last_hidden_state
    torch.testing.assert_close(a, b)


def test_attention_matches_reference_softmax():
    enc = build_encoder(preset("text", "tiny")).eval()
    attn = enc.transformer.blocks[0].attn
    x = torch.randn(2, 5, 96)
    q, k, v = (f(x).view(2, 5, 4, 24).transpose(1, 2) for f in (attn.q, attn.k, attn.v))
    ref = F.softmax(q @ k.transpose(-1, -2) / 24 ** 0.5, -1) @ v
    torch.testing.assert_close(attn(x), attn.out(ref.transpose(1, 2).reshape(2, 5, 96)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("modality,bad,match", [
    ("speech", torch.randn(8000), r"float waveform \[B, N\]"),
    ("speech", torch.randn(2, 1, 8000), r"float waveform \[B, N\]"),
    ("speech", torch.randn(2, 300), r"audio too short: 300 samples.*at least 400 samples"),
    ("image", torch.randn(2, 3, 28, 28), r"image input must be float \[B, 3, 32, 32\]"),
    ("image", torch.randn(3, 32, 32), r"image input must be float \[B, 3, 32, 32\]"),
    ("text", torch.randn(2, 8), r"token ids, a long tensor \[B, T\]"),
    ("text", torch.full((2, 8), 5000), r"token ids must be in \[0, 2048\)"),
    ("text", torch.full((2, 80), 5), r"longer than the 64 positions"),
])
def test_bad_input_says_what_was_expected(modality, bad, match):
    enc = build_encoder(preset(modality, "tiny"))
    with pytest.raises(ValueError, match=match):
        enc(bad)


def test_non_bool_mask_is_refused(modality):
    enc = build_encoder(preset(modality, "tiny"))
    x, _ = tiny_batch(modality, batch=2)
    T = {"speech": 24, "image": enc.num_patches if modality == "image" else 0, "text": 32}[modality]
    with pytest.raises(TypeError, match="bool"):
        enc(x, torch.zeros(2, T, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        enc(x, torch.zeros(2, T + 1, dtype=torch.bool))
