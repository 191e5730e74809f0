"""Loading fairseq data2vec 2.0 checkpoints (d2v_mini.fairseq_v2), offline.

No released checkpoint is available offline, so each test writes a tiny Data2Vec2 in fairseq's layout with a writer
of its own (below, written from fairseq 3d262bb's module structure, not from fairseq_v2.key_map): fused attn.qkv
rows q, k, v; conv positions at Sequential index i + 1; speech LN + Linear at project_features.1 / .2; the image
CLS as extra_tokens and MAE's sin-cos table as a stored parameter; the teacher as `_ema` with fairseq's teacher
names. The source model's weights are perturbed away from their inits and its teacher differs from its student, so
a swapped or skipped tensor cannot hide behind equal values. Runtime: a few seconds on 2 CPU cores.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2v_mini.config import override
from d2v_mini.data2vec2 import Data2Vec2
from d2v_mini.errors import CheckpointError
from d2v_mini.fairseq_v2 import load_fairseq_v2, read_checkpoint, released_layout
from d2v_mini.presets import preset

from .conftest import tiny_batch

NAME = {"speech": "AUDIO", "image": "IMAGE", "text": "TEXT"}


def _source(modality: str, seed: int = 0) -> Data2Vec2:
    """A tiny 2.0 model whose every tensor is moved off its init; its teacher differs from its student."""
    torch.manual_seed(seed)
    model = Data2Vec2(released_layout(preset(modality, "tiny_v2")))  # a released checkpoint's layout
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn_like(p)) if "alibi_scale" not in name else p.uniform_(0.5, 2.0)
        for name, p in model.teacher.model.named_parameters():
            p.add_(0.1 * torch.randn_like(p)) if "alibi_scale" not in name else p.uniform_(0.5, 2.0)
    return model.eval()


def mae_sincos(dim: int, side: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed (fairseq examples/data2vec/models/mae.py L370-417): [side^2, dim] float32."""
    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)))  # w first

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    return np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1).astype(np.float32)


def _fairseq_encoder(enc, modality: str, prenet: int, p: str) -> dict:
    """One encoder's tensors under fairseq's data2vec_multi names (model level: blocks.*, modality_encoders.*)."""
    sd = {}

    def lin(name, module):
        sd[f"{name}.weight"] = module.weight.detach().clone()
        if module.bias is not None:
            sd[f"{name}.bias"] = module.bias.detach().clone()

    for j, b in enumerate(enc.transformer.blocks):  # AltBlock: attn.qkv (rows q | k | v), attn.proj, mlp.fc1/fc2
        base = f"{p}context_encoder.blocks.{j}" if j < prenet else f"blocks.{j - prenet}"
        for w in ("weight", "bias"):
            sd[f"{base}.attn.qkv.{w}"] = torch.cat([getattr(b.attn, n).__getattr__(w).detach() for n in "qkv"])
        lin(f"{base}.attn.proj", b.attn.out)
        lin(f"{base}.mlp.fc1", b.fc1)
        lin(f"{base}.mlp.fc2", b.fc2)
        lin(f"{base}.norm1", b.norm1)
        lin(f"{base}.norm2", b.norm2)
    if modality == "speech":
        for i, layer in enumerate(enc.feature_encoder.layers):  # Sequential(conv, Dropout, (TransposeLast, LN, ..))
            sd[f"{p}local_encoder.conv_layers.{i}.0.weight"] = layer.conv.weight.detach().clone()
            lin(f"{p}local_encoder.conv_layers.{i}.2.1", layer.norm)
        lin(f"{p}project_features.1", enc.feature_norm)  # index 0 is TransposeLast
        lin(f"{p}project_features.2", enc.feature_proj)
        for i, conv in enumerate(enc.pos_conv.convs):  # index 0 is TransposeLast
            lin(f"{p}relative_positional_encoder.{i + 1}.0", conv)
        lin(f"{p}context_encoder.norm", enc.norm)
        sd[f"{p}alibi_scale"] = enc.alibi_scale.detach().clone().reshape(1, 1, -1, 1, 1)
    elif modality == "image":
        lin(f"{p}local_encoder.proj", enc.patch_embed)
        sd[f"{p}extra_tokens"] = enc.cls_token.detach().clone()
        lin(f"{p}context_encoder.norm", enc.context_norm)
        side = enc.grid[0]
        sd[f"{p}fixed_positional_encoder.positions"] = torch.from_numpy(mae_sincos(enc.cfg.dim, side))[None]
    else:
        sd[f"{p}local_encoder.embed_tokens.weight"] = enc.tokens.weight.detach().clone()
        sd[f"{p}local_encoder.embed_positions.weight"] = enc.positions.weight.detach().clone()
        lin(f"{p}local_encoder.layernorm_embedding", enc.emb_norm)
    return sd


def fairseq_state(model: Data2Vec2, with_ema: bool = True) -> dict:
    """checkpoint["model"] of a fairseq data2vec_multi model holding `model` (teacher in `_ema`)."""
    modality, prenet = model.cfg.modality, model.cfg.encoder.prenet_depth
    p = f"modality_encoders.{NAME[modality]}."
    sd = _fairseq_encoder(model.student, modality, prenet, p)
    for i, layer in enumerate(model.decoder.layers):  # Decoder1d/2d blocks.{i} = Sequential(conv, SamePad, ...)
        sd[f"{p}decoder.blocks.{i}.0.weight"] = layer.conv.weight.detach().clone()
        sd[f"{p}decoder.blocks.{i}.0.bias"] = layer.conv.bias.detach().clone()
    proj = model.decoder.proj
    for i, lin in ([(None, proj)] if isinstance(proj, torch.nn.Linear) else [(0, proj[0]), (2, proj[2])]):
        name = f"{p}decoder.proj" + ("" if i is None else f".{i}")
        sd[f"{name}.weight"], sd[f"{name}.bias"] = lin.weight.detach().clone(), lin.bias.detach().clone()
    if with_ema:  # the teacher module's own names (data2vec2.py make_target_model)
        t = _fairseq_encoder(model.teacher.model, modality, prenet, p)
        if modality == "speech":  # local_encoder and project_features are set to None in the teacher
            t = {k: v for k, v in t.items() if ".local_encoder." not in k and ".project_features." not in k}
        if modality == "text":  # ema_encoder_only: the teacher is model.blocks
            t = {k[len("blocks."):]: v for k, v in t.items() if k.startswith("blocks.")}
        sd["_ema"] = t
    return sd


def _assert_same(ours, theirs, what):
    a, b = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{what} {name} differs"


def _check_loaded(modality, loaded, source):
    _assert_same(loaded.student, source.student, "student")
    _assert_same(loaded.decoder, source.decoder, "decoder")
    shared = {"speech": ("feature_encoder.", "feature_norm.", "feature_proj."),
              "image": (), "text": ("tokens.", "positions.", "emb_norm.")}[modality]
    s, t, src_t = (dict(m.named_parameters()) for m in (loaded.student, loaded.teacher.model, source.teacher.model))
    for name in t:  # the teacher holds `_ema`, except what fairseq's teacher shares with (copies from) the student
        want = s[name] if name.startswith(shared) else src_t[name]
        source_of = "student" if name.startswith(shared) else "_ema"
        assert torch.equal(t[name], want), f"teacher {name} is not its {source_of} tensor"
        if not name.startswith(shared):
            assert not torch.equal(t[name], s[name]), f"teacher {name} equals the student's: `_ema` was not used"
    x, pm = tiny_batch(modality, batch=2)
    a, b = loaded.student(x, None, pm), source.student(x, None, pm)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert all(torch.equal(u, v) for u, v in zip(a.layer_results, b.layer_results))
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(loaded(x, pm, generator=gen()).loss, source(x, pm, generator=gen()).loss)  # decoder + teacher


def fairseq_block(sd: dict, base: str, x: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """fairseq AltBlock (post-LN, modules.py L314-319) + AltAttention (L354-396) from the fairseq tensors."""
    B, N, C = x.shape
    qkv = F.linear(x, sd[f"{base}.attn.qkv.weight"], sd[f"{base}.attn.qkv.bias"])
    q, k, v = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    y = (attn @ v).transpose(1, 2).reshape(B, N, C)
    a = F.linear(y, sd[f"{base}.attn.proj.weight"], sd[f"{base}.attn.proj.bias"])
    r = F.layer_norm(x + a, (C,), sd[f"{base}.norm1.weight"], sd[f"{base}.norm1.bias"], eps)
    h = F.linear(F.gelu(F.linear(r, sd[f"{base}.mlp.fc1.weight"], sd[f"{base}.mlp.fc1.bias"])),
                 sd[f"{base}.mlp.fc2.weight"], sd[f"{base}.mlp.fc2.bias"])
    return F.layer_norm(r + h, (C,), sd[f"{base}.norm2.weight"], sd[f"{base}.norm2.bias"], eps)


def assert_block_is_fairseqs(loaded, index: int, sd: dict, name: str, eps: float) -> None:
    """Our loaded block `index` computes what fairseq's block `name` computes on the same input (4 heads, D 96)."""
    x = torch.randn(2, 7, 96)
    ours, _ = loaded.student.transformer.blocks[index](x)
    torch.testing.assert_close(ours, fairseq_block(sd, name, x, heads=4, eps=eps), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- one test per modality
def test_speech_checkpoint_loads_exactly():
    source = _source("speech")
    sd = fairseq_state(source)
    loaded = load_fairseq_v2(sd, "speech", "tiny_v2")
    _check_loaded("speech", loaded, source)
    # fairseq's block computes what our loaded block computes (the fused q/k/v split is right)
    assert_block_is_fairseqs(loaded, 1, sd, "blocks.1", eps=1e-5)
    # an older checkpoint's 4-D alibi_scale [1, H, 1, 1] (base.py upgrade_state_dict_named) loads the same
    old = fairseq_state(source)
    old["modality_encoders.AUDIO.alibi_scale"] = old["modality_encoders.AUDIO.alibi_scale"][0]
    old["_ema"]["modality_encoders.AUDIO.alibi_scale"] = old["_ema"]["modality_encoders.AUDIO.alibi_scale"][0]
    reloaded = load_fairseq_v2(old, "speech", "tiny_v2")
    assert torch.equal(reloaded.student.alibi_scale, source.student.alibi_scale)
    assert torch.equal(reloaded.teacher.model.alibi_scale, source.teacher.model.alibi_scale)


def test_image_checkpoint_loads_exactly():
    source = _source("image")
    sd = fairseq_state(source)
    loaded = load_fairseq_v2(sd, "image", "tiny_v2")
    _check_loaded("image", loaded, source)
    # prenet block 0 is fairseq's context_encoder.blocks.0 (post-LN, eps 1e-6)
    assert_block_is_fairseqs(loaded, 0, sd, "modality_encoders.IMAGE.context_encoder.blocks.0", eps=1e-6)
    # the stored sin-cos table must be MAE's: rows and columns swapped is refused
    bad = fairseq_state(source)
    key = "modality_encoders.IMAGE.fixed_positional_encoder.positions"
    bad[key] = torch.cat([bad[key][..., 48:], bad[key][..., :48]], dim=-1)
    with pytest.raises(CheckpointError, match="sin-cos"):
        load_fairseq_v2(bad, "image", "tiny_v2")


def test_text_checkpoint_loads_exactly():
    source = _source("text")
    sd = fairseq_state(source)
    loaded = load_fairseq_v2(sd, "text", "tiny_v2")
    _check_loaded("text", loaded, source)
    # fairseq's TextLocalEncoder (text.py L153-161): tokens + positions from utils.make_positions (real tokens from
    # row pad + 1 = 2, padding at row 1), then layernorm_embedding; padded batch
    p, pad = "modality_encoders.TEXT.local_encoder.", 1
    tokens = torch.tensor([[0, 17, 99, 5, 2], [0, 42, 2, pad, pad]])
    mask = tokens.ne(pad).int()
    positions = torch.cumsum(mask, dim=1) * mask + pad
    e = sd[p + "embed_tokens.weight"][tokens] + sd[p + "embed_positions.weight"][positions]
    want = F.layer_norm(e, (96,), sd[p + "layernorm_embedding.weight"], sd[p + "layernorm_embedding.bias"], 1e-5)
    got, _ = loaded.student.embed(tokens)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ refusals
def test_without_ema_the_teacher_is_the_student():
    source = _source("image")
    loaded = load_fairseq_v2(fairseq_state(source, with_ema=False), "image", "tiny_v2")
    _assert_same(loaded.teacher.model, loaded.student, "teacher without _ema")


def test_a_checkpoint_that_does_not_fit_is_refused_clearly():
    source = _source("speech")
    sd = fairseq_state(source)
    broken = dict(sd)
    del broken["blocks.2.mlp.fc1.weight"]
    with pytest.raises(CheckpointError, match=r"missing blocks\.2\.mlp\.fc1\.weight"):
        load_fairseq_v2(broken, "speech", "tiny_v2")
    teacher_broken = {**sd, "_ema": {k: v for k, v in sd["_ema"].items() if k != "blocks.0.norm2.bias"}}
    with pytest.raises(CheckpointError, match=r"`_ema` \(the teacher\) has missing blocks\.0\.norm2\.bias"):
        load_fairseq_v2(teacher_broken, "speech", "tiny_v2")
    with pytest.raises(CheckpointError, match=r"fairseq AUDIO checkpoint.*image \(IMAGE\).*modality=\['speech'\]"):
        load_fairseq_v2(sd, "image", "tiny_v2")
    deeper = override(preset("speech", "tiny_v2"), **{"encoder.depth": 5})
    with pytest.raises(CheckpointError, match=r"missing blocks\.4\..*5 blocks.*0 prenet \+ 4 shared blocks"):
        load_fairseq_v2(sd, "speech", cfg=deeper)
    wider = override(preset("speech", "tiny_v2"), **{"encoder.ffn_dim": 256})
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc1\.weight has shape \(192, 96\), but our "
                                              r"student\.transformer\.blocks\.0\.fc1\.weight has shape \(256, 96\)"):
        load_fairseq_v2(sd, "speech", cfg=wider)
    with pytest.raises(CheckpointError, match=r"2\.0 config"):
        load_fairseq_v2(sd, "speech", cfg=preset("speech", "tiny"))  # a 1.0 config
    image = fairseq_state(_source("image"))
    with pytest.raises(CheckpointError, match=r"positions has shape \(1, 64, 96\).*10 x 10 patch grid.*\(1, 100, 96\)"):
        load_fairseq_v2(image, "image", cfg=override(preset("image", "tiny_v2"), **{"encoder.image_size": 40}))
    with pytest.raises(CheckpointError, match="not a pretrained fairseq data2vec 2.0"):
        load_fairseq_v2({"encoder.layers.0.weight": torch.zeros(1)}, "speech", "tiny_v2")
    finetuned = {"model": {f"w2v_encoder.w2v_model.{k}": v for k, v in sd.items() if k != "_ema"}}
    with pytest.raises(CheckpointError, match="looks like a fine-tuned model"):
        load_fairseq_v2(finetuned, "speech", "tiny_v2")


def test_checkpoint_file_reads_without_fairseq_and_runs_no_code(tmp_path):
    """A fairseq .pt also pickles its omegaconf config (classes not installed here): those become inert stubs;
    a global that would run code when unpickled (here os.system) is never called."""
    source = _source("text")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "fakeconf.py").write_text("class DictConfig:\n    def __init__(self, d):\n        self.d = d\n")
    marker = tmp_path / "ran"
    script = (f"import sys, os, torch; sys.path.insert(0, {str(pkg)!r}); import fakeconf\n"
              f"class Evil:\n    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
              f"sd = torch.load({str(tmp_path / 'sd.pt')!r})\n"
              f"torch.save({{'cfg': fakeconf.DictConfig({{'model': 1}}), 'evil': Evil(), 'model': sd}}, "
              f"{str(tmp_path / 'ckpt.pt')!r})\n")
    torch.save(fairseq_state(source), tmp_path / "sd.pt")
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = read_checkpoint(tmp_path / "ckpt.pt")  # fakeconf is not importable in this process
    assert not marker.exists()
    _check_loaded("text", load_fairseq_v2(tmp_path / "ckpt.pt", "text", "tiny_v2"), source)
    assert set(state) == set(fairseq_state(source))
    with pytest.raises(CheckpointError, match="no fairseq checkpoint"):
        read_checkpoint(tmp_path / "missing.pt")
