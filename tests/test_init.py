"""The released initialisation per modality (d2v_mini/init.py), and `init="torch"` keeping PyTorch's."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from d2v_mini.config import override
from d2v_mini.data2vec import Data2Vec
from d2v_mini.presets import preset

TRUNC_STD = 0.02 * math.sqrt(1 - 2 * math.exp(-0.5) / math.sqrt(2 * math.pi) / math.erf(1 / math.sqrt(2)))  # 0.0108


def std(t: torch.Tensor) -> float:
    return t.detach().float().std().item()


def torch_default_std(layer: nn.Module) -> float:
    """std of PyTorch's default Linear / Conv weight: U(+-1/sqrt(fan_in)) -> 1 / sqrt(3 fan_in)."""
    fan_in = layer.weight[0].numel()
    return 1 / math.sqrt(3 * fan_in)


def model(modality: str, init: str = "released") -> Data2Vec:
    torch.manual_seed(0)
    return Data2Vec(override(preset(modality, "tiny"), **{"encoder.init": init}))


def test_speech_released_init_is_wav2vec2():
    m = model("speech")
    enc = m.student
    for layer in enc.feature_encoder.layers:  # kaiming_normal_: std sqrt(2 / fan_in), fan_in = C_in * k
        fan_in = layer.conv.weight[0].numel()
        assert std(layer.conv.weight) == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    for block in enc.transformer.blocks:  # init_bert_params: N(0, 0.02), bias 0
        for lin in (block.attn.q, block.attn.k, block.attn.v, block.attn.out, block.fc1, block.fc2):
            assert std(lin.weight) == pytest.approx(0.02, rel=0.05)
            assert torch.count_nonzero(lin.bias) == 0
    # outside fairseq's TransformerEncoder (post_extract_proj, final_proj) and the depth > 1 conv positions:
    # PyTorch's defaults
    for layer in [enc.feature_proj, m.head.net, *enc.pos_conv.convs]:
        assert std(layer.weight) == pytest.approx(torch_default_std(layer), rel=0.1)
    assert 0 <= enc.mask_emb.min() and enc.mask_emb.max() < 1 and std(enc.mask_emb) > 0.2  # U[0, 1)


def test_text_released_init_is_bert_everywhere_including_the_head():
    m = model("text")
    enc = m.student
    linears = [mod for mod in list(enc.modules()) + list(m.head.modules()) if isinstance(mod, nn.Linear)]
    assert len(linears) == 6 * len(enc.transformer.blocks) + 2  # q k v out fc1 fc2 per block, 2-layer head
    for lin in linears:
        assert std(lin.weight) == pytest.approx(0.02, rel=0.05)
        assert torch.count_nonzero(lin.bias) == 0
    pad = enc.cfg.pad_idx
    for emb in (enc.tokens, enc.positions):
        assert torch.count_nonzero(emb.weight[pad]) == 0  # padding row zero
        rows = torch.cat([emb.weight[:pad], emb.weight[pad + 1:]])
        assert std(rows) == pytest.approx(0.02, rel=0.05)


def test_image_released_init_is_beit_with_per_layer_rescale():
    m = model("image")
    enc = m.student
    # data2vec-vision truncates N(0, 0.02) at +-0.02: every weight within the bound, std 0.0108
    for w in (enc.patch_embed.weight, enc.cls_token, enc.mask_token, enc.pos_embed, m.head.net.weight):
        assert w.abs().max() <= 0.02 + 1e-7
    assert std(enc.patch_embed.weight) == pytest.approx(TRUNC_STD, rel=0.1)
    assert std(m.head.net.weight) == pytest.approx(TRUNC_STD, rel=0.05)
    for l, block in enumerate(enc.transformer.blocks, start=1):
        for lin in (block.attn.q, block.attn.v, block.fc1):
            assert std(lin.weight) == pytest.approx(TRUNC_STD, rel=0.05)
        for lin in (block.attn.out, block.fc2):  # fix_init_weight: / sqrt(2 l)
            assert std(lin.weight) == pytest.approx(TRUNC_STD / math.sqrt(2 * l), rel=0.05), (l, lin)
        for lin in (block.attn.q, block.attn.v, block.attn.out, block.fc1, block.fc2):
            assert torch.count_nonzero(lin.bias) == 0
        assert torch.all(block.norm1.weight == 1) and torch.count_nonzero(block.norm1.bias) == 0
        assert torch.all(block.gamma1 == enc.cfg.layer_scale_init)
    assert torch.count_nonzero(enc.rel_pos.table) == 0  # BEiT leaves the relative position table at zero


@pytest.mark.parametrize("modality", ["speech", "image", "text"])
def test_torch_init_keeps_pytorch_defaults(modality):
    enc = model(modality, "torch").student
    fc1 = enc.transformer.blocks[0].fc1
    assert std(fc1.weight) == pytest.approx(torch_default_std(fc1), rel=0.05)  # 1/sqrt(3 * 96) = 0.059, not 0.02
    released = model(modality).student.transformer.blocks[0].fc1
    assert std(released.weight) < 0.5 * std(fc1.weight)


def test_teacher_starts_as_the_released_student_and_bad_init_is_explained():
    m = model("image")
    for (n, s), (_, t) in zip(m.student.named_parameters(), m.teacher.model.named_parameters()):
        assert torch.equal(s, t), n
    with pytest.raises(ValueError, match="encoder.init must be 'released'.*or 'torch'"):
        Data2Vec(override(preset("text", "tiny"), **{"encoder.init": "xavier"}))


def test_released_init_on_the_meta_device():
    """Presets count parameters on the meta device: the init must not need real storage."""
    with torch.device("meta"):
        for modality in ("speech", "image", "text"):
            assert Data2Vec(preset(modality, "tiny")).encoder_params() > 0


# ------------------------------------------------------------------------------------------ data2vec 2.0
def model_v2(modality: str, init: str = "released"):
    from d2v_mini.data2vec2 import Data2Vec2

    torch.manual_seed(0)
    return Data2Vec2(override(preset(modality, "tiny_v2"), **{"encoder.init": init}))


def test_image_v2_init_is_bert_and_xavier_not_beit():
    m = model_v2("image")
    blocks = m.student.transformer.blocks
    # init_bert_params: N(0, 0.02) untruncated (BEiT's would stay inside +-0.02 with std 0.0108) ...
    fc2_first, fc2_last = blocks[0].fc2.weight, blocks[-1].fc2.weight
    assert std(fc2_first) == pytest.approx(0.02, rel=0.03) and fc2_first.abs().max() > 0.06
    # ... and no 1 / sqrt(2 l) rescale of the output projections
    assert std(fc2_last) == pytest.approx(std(fc2_first), rel=0.03)
    # MAE's patch embedding: xavier_uniform on the flattened [D, C p p] weight
    w = m.student.patch_embed.weight
    assert std(w) == pytest.approx(math.sqrt(2 / (w.shape[0] + w[0].numel())), rel=0.03)
    assert std(m.student.cls_token) == pytest.approx(1.0, rel=0.25)  # init_extra_token_zero: false


@pytest.mark.parametrize("modality", ["speech", "image", "text"])
def test_v2_decoder_convs_default_projection_per_modality(modality):
    d = model_v2(modality).decoder
    conv = d.layers[1].conv  # convs: PyTorch default everywhere (init_bert_params skips convs)
    assert std(conv.weight) == pytest.approx(torch_default_std(conv), rel=0.1)
    proj = d.proj if isinstance(d.proj, nn.Linear) else d.proj[0]
    if modality == "text":  # init_bert_params
        assert std(proj.weight) == pytest.approx(0.02, rel=0.1) and not proj.bias.any()
    else:  # speech / image encoders reset their decoder projection after init_bert_params
        assert std(proj.weight) == pytest.approx(torch_default_std(proj), rel=0.1) and proj.bias.abs().sum() > 0
