"""Load fairseq's released data2vec 2.0 checkpoints (`data2vec_multi`) into `Data2Vec2`.

    model = load_fairseq_v2("base_libri.pt", "speech", "base_v2")   # or a state dict: torch.load(p)["model"]
    model.student  -> the pretrained encoder;  model.decoder;  model.teacher <- `_ema` (a student copy if absent)

Layout (../shared/reference/data2vec-recipes.md 4.1, 4.7 A12, C6, 6.5; checked against fairseq 3d262bb
`examples/data2vec/models/data2vec2.py` and `models/modalities/{base,audio,images,text,modules}.py`):

    fairseq  modality_encoders.{AUDIO|IMAGE|TEXT}.*  +  blocks.{i}.*  +  _ema (teacher fp32 tensors)
    ours     student.*, decoder.*, teacher.model.*

  blocks      our stack = fairseq `context_encoder.blocks` (the prenet) then `blocks`; `attn.qkv` [3D, D] holds
              q, k, v in that order (rows (3 h d), reshaped (B, N, 3, H, d)) and is split into attn.q / k / v;
              attn.proj -> attn.out, mlp.fc1 / fc2 -> fc1 / fc2; norm1 / norm2 keep their names (both post-LN).
  speech      local_encoder.conv_layers.{i}.0 conv, .2.1 LayerNorm; project_features.{1,2} (0 is TransposeLast)
              LN + Linear; relative_positional_encoder.{i+1}.0 conv-pos conv i (0 is TransposeLast);
              context_encoder.norm -> norm; alibi_scale [1, 1, H, 1, 1] (older files [1, H, 1, 1]) -> [H].
  image       local_encoder.proj -> patch_embed; extra_tokens [1, 1, D] -> cls_token; context_encoder.norm ->
              context_norm; fixed_positional_encoder.positions [1, N, D] is our fixed `sincos` buffer: checked.
  text        local_encoder.embed_tokens / embed_positions / layernorm_embedding -> tokens / positions / emb_norm.
              The position table has max_source_positions + pad + 1 rows, real tokens from row pad + 1 (= 2):
              ours has the same rows and indexing (cfg.max_positions = 514 for 512 tokens), copied as is.
  decoder     decoder.blocks.{i}.0 conv -> decoder.layers.{i}.conv; decoder.proj (or proj.0 / proj.2, text).
  teacher     `_ema` keys are relative to fairseq's teacher module: speech / images use the model's names
              (speech without local_encoder / project_features: shared with the student, copied from it),
              text the shared blocks only (`{i}.attn.qkv.weight`; embeddings shared, copied from the student).

A checkpoint that does not fit the config raises CheckpointError naming the missing and unexpected keys, or
both shapes of a mismatched tensor, with the expected modality and size and what the checkpoint holds.
Text token ids are fairseq's dictionary ids (pad 1, as TextConfig.pad_idx). A .pt file is read without fairseq
or omegaconf (`read_checkpoint`): its pickled config becomes inert stand-ins and no code from the file runs.
"""
from __future__ import annotations

from dataclasses import replace

import pickle
import re
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from .config import Data2VecConfig
from .config_v2 import ImageConfig2, SpeechConfig2, TextConfig2
from .errors import CheckpointError

FAIRSEQ_MODALITY = {"speech": "AUDIO", "image": "IMAGE", "text": "TEXT"}
_BLOCK = {"attn.out": "attn.proj", "norm1": "norm1", "fc1": "mlp.fc1", "fc2": "mlp.fc2", "norm2": "norm2"}
_QKV = ("attn.q", "attn.k", "attn.v")  # the three row-thirds of fairseq's fused attn.qkv, in this order
_WB = ("weight", "bias")


def _check_supported(cfg: Data2VecConfig) -> None:
    enc = cfg.encoder
    if cfg.version != 2 or not isinstance(enc, (SpeechConfig2, ImageConfig2, TextConfig2)):
        raise CheckpointError("fairseq data2vec 2.0 checkpoints load into a 2.0 config (presets '*_v2')")
    problems = [why for bad, why in (
        (enc.norm_first, "norm_first=True (fairseq 2.0 blocks are post-LN)"),
        (enc.layer_scale_init > 0, "layer scale (fairseq 2.0 blocks have none)"),
        (not enc.key_bias, "key_bias=False (fairseq attn.qkv has a bias for q, k and v)"),
        (isinstance(enc, SpeechConfig2) and enc.conv_bias, "conv_bias=True (fairseq's audio CNN has no bias)"),
        (isinstance(enc, SpeechConfig2) and not enc.alibi, "alibi=False (the released audio models use ALiBi)"),
        (isinstance(enc, ImageConfig2) and enc.final_norm, "final_norm=True (post-LN fairseq has no final norm)"),
        (isinstance(enc, TextConfig2) and enc.prenet_depth > 0, "text prenet_depth > 0 (fairseq then adds a "
                                                                "context LayerNorm that our text encoder lacks)"),
    ) if bad]
    if problems:
        raise CheckpointError(f"this {cfg.modality} config cannot hold a fairseq 2.0 model: {'; '.join(problems)}")


def key_map(cfg: Data2VecConfig) -> dict[str, tuple[str, int | None]]:
    """{our Data2Vec2 parameter (student.*, decoder.*): (fairseq key, part)} for every parameter; `part` 0/1/2
    is the q/k/v third of a fused `attn.qkv` tensor, None the whole tensor."""
    _check_supported(cfg)
    enc, mod = cfg.encoder, f"modality_encoders.{FAIRSEQ_MODALITY[cfg.modality]}."
    m: dict[str, tuple[str, int | None]] = {}

    def put(ours: str, theirs: str) -> None:
        m[ours] = (theirs, None)

    if isinstance(enc, SpeechConfig2):
        for i in range(len(enc.conv_layers)):
            put(f"student.feature_encoder.layers.{i}.conv.weight", f"{mod}local_encoder.conv_layers.{i}.0.weight")
            for p in _WB:
                put(f"student.feature_encoder.layers.{i}.norm.{p}", f"{mod}local_encoder.conv_layers.{i}.2.1.{p}")
        for p in _WB:
            put(f"student.feature_norm.{p}", f"{mod}project_features.1.{p}")
            put(f"student.feature_proj.{p}", f"{mod}project_features.2.{p}")
            put(f"student.norm.{p}", f"{mod}context_encoder.norm.{p}")
            for i in range(enc.conv_pos_layers):
                put(f"student.pos_conv.convs.{i}.{p}", f"{mod}relative_positional_encoder.{i + 1}.0.{p}")
        put("student.alibi_scale", f"{mod}alibi_scale")  # [1, 1, H, 1, 1] -> [H] in `_tensor`
    elif isinstance(enc, ImageConfig2):
        for p in _WB:
            put(f"student.patch_embed.{p}", f"{mod}local_encoder.proj.{p}")
            put(f"student.context_norm.{p}", f"{mod}context_encoder.norm.{p}")
        put("student.cls_token", f"{mod}extra_tokens")
    else:
        put("student.tokens.weight", f"{mod}local_encoder.embed_tokens.weight")
        put("student.positions.weight", f"{mod}local_encoder.embed_positions.weight")  # same rows, same offset
        for p in _WB:
            put(f"student.emb_norm.{p}", f"{mod}local_encoder.layernorm_embedding.{p}")
    for j in range(enc.depth):
        theirs = f"{mod}context_encoder.blocks.{j}" if j < enc.prenet_depth else f"blocks.{j - enc.prenet_depth}"
        for p in _WB:
            for part, ours in enumerate(_QKV):
                m[f"student.transformer.blocks.{j}.{ours}.{p}"] = (f"{theirs}.attn.qkv.{p}", part)
            for ours, name in _BLOCK.items():
                put(f"student.transformer.blocks.{j}.{ours}.{p}", f"{theirs}.{name}.{p}")
    dec = cfg.v2.decoder
    for i in range(dec.layers):
        for p in _WB:
            put(f"decoder.layers.{i}.conv.{p}", f"{mod}decoder.blocks.{i}.0.{p}")
    for p in _WB:
        if dec.projection_layers == 1:
            put(f"decoder.proj.{p}", f"{mod}decoder.proj.{p}")
        else:  # Linear, GELU, Linear (fairseq Decoder1d with projection_layers 2)
            put(f"decoder.proj.0.{p}", f"{mod}decoder.proj.0.{p}")
            put(f"decoder.proj.2.{p}", f"{mod}decoder.proj.2.{p}")
    return m


def teacher_key(cfg: Data2VecConfig, fairseq_key: str) -> str | None:
    """The `_ema` key of a fairseq model key, None when fairseq's teacher has no such tensor (data2vec2.py
    make_target_model: decoder dropped; speech drops local_encoder / project_features; text keeps `blocks`)."""
    mod = f"modality_encoders.{FAIRSEQ_MODALITY[cfg.modality]}."
    if ".decoder." in fairseq_key:
        return None
    if cfg.modality == "text":  # ema_encoder_only: the teacher is model.blocks, keys `{i}.attn.qkv.weight`
        return fairseq_key[len("blocks."):] if fairseq_key.startswith("blocks.") else None
    if cfg.modality == "speech" and fairseq_key.startswith((mod + "local_encoder.", mod + "project_features.")):
        return None
    return fairseq_key


def _describe_config(cfg: Data2VecConfig) -> str:
    e = cfg.encoder
    return (f"{cfg.modality} ({FAIRSEQ_MODALITY[cfg.modality]}) preset {cfg.name!r}: dim {e.dim}, {e.depth} blocks "
            f"({e.prenet_depth} prenet + {e.depth - e.prenet_depth} shared), {e.heads} heads")


def _describe_checkpoint(state: dict) -> str:
    mods = sorted({k.split(".")[1] for k in state if k.startswith("modality_encoders.")})
    shared = {int(k.split(".")[1]) for k in state if re.match(r"blocks\.\d+\.", k)}
    prenet = {int(m.group(1)) for k in state if (m := re.search(r"context_encoder\.blocks\.(\d+)\.", k))}
    norm = state.get("blocks.0.norm1.weight")
    dim = f"dim {norm.shape[0]}" if torch.is_tensor(norm) else "no blocks.0.norm1.weight"
    return f"modality {'/'.join(mods) or 'none'}, {dim}, {len(prenet)} prenet + {len(shared)} shared blocks"


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _check_keys(present: set[str], expected: set[str], where: str, cfg: Data2VecConfig, state: dict) -> None:
    missing, unexpected = expected - present, present - expected
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"fairseq 2.0 checkpoint does not fit the config: {where} has {'; '.join(parts)}. "
                              f"Expected {_describe_config(cfg)}; the checkpoint holds {_describe_checkpoint(state)}. "
                              f"Pick the preset of the checkpoint's modality and size (load_fairseq_v2(..., modality, "
                              f"preset_name))")


def _tensor(src: dict, key: str, part: int | None, shape: torch.Size, ours: str, where: str,
            cfg: Data2VecConfig, state: dict) -> Tensor:
    """The fairseq tensor for our parameter `ours` of `shape`: a q/k/v third, or alibi_scale as [H]."""
    t = src[key]
    if part is not None:  # fused [3 D, D] / [3 D] -> one third (fairseq reshape (B, N, 3, H, d): q rows first)
        if t.shape[0] % 3:
            raise CheckpointError(f"{where} {key} has shape {tuple(t.shape)}: a fused q/k/v tensor needs 3 x D rows")
        t = rearrange(t, "(three d) ... -> three d ...", three=3)[part]
    elif ours.endswith("alibi_scale"):  # [layers, 1, H, 1, 1]; older checkpoints [1, H, 1, 1] (base.py L148-153)
        if t.ndim == 4:
            t = rearrange(t, "one h a b -> 1 one h a b")
        if t.ndim != 5 or t.shape[0] != 1 or t.shape[1] != 1 or t.shape[3:] != (1, 1):
            raise CheckpointError(f"{where} {key} has shape {tuple(t.shape)}, expected [1, 1, H, 1, 1] (one scale per "
                                  f"head; per-layer scales are not supported) for our alibi_scale {tuple(shape)}")
        t = rearrange(t, "1 1 h 1 1 -> h")
    if t.shape != shape:
        raise CheckpointError(f"{where} {key} has shape {tuple(t.shape)}, but our {ours} has shape {tuple(shape)}. "
                              f"Expected {_describe_config(cfg)}; the checkpoint holds {_describe_checkpoint(state)}")
    return t


def _take(src: dict, kmap: dict, extra: set[str], where: str, cfg: Data2VecConfig, state: dict,
          shapes: dict[str, torch.Size]) -> dict[str, Tensor]:
    """{ours: tensor} for `kmap` from `src`, which must hold exactly kmap's keys plus `extra` (checked, not loaded)."""
    _check_keys(set(src), {k for k, _ in kmap.values()} | extra, where, cfg, state)
    for key in extra:
        _check_fixed_positions(src[key], cfg, key)
    return {ours: _tensor(src, k, part, shapes[ours], ours, where, cfg, state) for ours, (k, part) in kmap.items()}


def convert(state: dict, cfg: Data2VecConfig, shapes: dict[str, torch.Size]) -> dict[str, Tensor]:
    """A fairseq 2.0 state dict (`checkpoint["model"]`) -> our Data2Vec2 state dict (student.*, decoder.*,
    teacher.model.* from `_ema`, or the student's tensors when absent). `shapes`: our parameter shapes."""
    mod = FAIRSEQ_MODALITY[cfg.modality]
    held = {k.split(".")[1] for k in state if k.startswith("modality_encoders.")}
    if held and mod not in held:
        raise CheckpointError(f"this is a fairseq {'/'.join(sorted(held))} checkpoint, but the config is "
                              f"{_describe_config(cfg)}: pass modality="
                              f"{[k for k, v in FAIRSEQ_MODALITY.items() if v in held]}")
    kmap = key_map(cfg)
    fixed = {f"modality_encoders.{mod}.fixed_positional_encoder.positions"} if cfg.modality == "image" else set()
    model = {k: v for k, v in state.items() if k != "_ema"}
    out = _take(model, kmap, fixed, "the model", cfg, state, shapes)
    teacher = {}
    if "_ema" in state:
        tmap = {ours: (teacher_key(cfg, k), part) for ours, (k, part) in kmap.items() if teacher_key(cfg, k)}
        teacher = _take(state["_ema"], tmap, {teacher_key(cfg, k) for k in fixed}, "`_ema` (the teacher)", cfg,
                        state, shapes)
    for ours in [k for k in out if k.startswith("student.")]:  # what fairseq's teacher lacks is shared: copied
        out["teacher.model." + ours[len("student."):]] = teacher.get(ours, out[ours])
    return out


def _check_fixed_positions(t: Tensor, cfg: Data2VecConfig, key: str) -> None:
    """fairseq stores MAE's fixed 2-D sin-cos table (a frozen parameter); ours computes the same in a buffer."""
    from .encoders_v2 import sincos_2d
    enc = cfg.encoder
    grid = (enc.image_size // enc.patch_size,) * 2
    ours = rearrange(sincos_2d(enc.dim, grid), "n d -> 1 n d")
    if t.shape != ours.shape:
        raise CheckpointError(f"{key} has shape {tuple(t.shape)}, but the config's {grid[0]} x {grid[1]} patch grid "
                              f"of dim {enc.dim} needs {tuple(ours.shape)} (image_size / patch_size)")
    tol = 1e-5 if t.dtype == torch.float32 else 2e-3  # fp16 checkpoints round the table
    if not torch.allclose(t.float(), ours, atol=tol):
        diff = (t.float() - ours).abs().max().item()
        raise CheckpointError(f"{key} differs from the fixed 2-D sin-cos positions by up to {diff:.3g}: the checkpoint "
                              f"was not trained with MAE's fixed positions, which d2v_mini's image encoder computes")


# ------------------------------------------------------------------------------------------ reading the file
class _Stub:
    """Stands in for any class or function a checkpoint names outside `_REAL` (fairseq's omegaconf config,
    argparse, enums): called, built or given a state, it only records its arguments. Nothing else runs."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


_REAL = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
         ("torch._utils", "_rebuild_parameter"), ("torch", "Size"), ("builtins", "set"), ("builtins", "frozenset")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _REAL:
            return super().find_class(module, name)
        return type(name, (_Stub,), {"__module__": f"stub:{module}"})


class _LenientPickle:  # the `pickle_module` torch.load accepts: our Unpickler, the standard rest
    Unpickler = _Unpickler
    load = pickle.load
    __name__ = "d2v_mini.fairseq_v2"


def read_checkpoint(path: str | Path) -> dict:
    """The `model` state dict of a fairseq checkpoint file (a dict with "model", "cfg", "optimizer_history", ...).

    The file is unpickled without importing fairseq or omegaconf: tensors and plain containers are rebuilt, every
    other class or function the file names (its config) becomes an inert stand-in, so no code from the file runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no fairseq checkpoint at {path}: pass the .pt file (e.g. base_libri.pt) or its "
                              f"state dict")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LenientPickle)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(f"{path} could not be read as a torch checkpoint ({type(e).__name__}: {e})") from e
    return _model_state(ckpt, str(path))


def _model_state(ckpt, what: str) -> dict:
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("modality_encoders.") for k in state):
        got = sorted(state)[:8] if isinstance(state, dict) else type(ckpt).__name__
        nested = isinstance(state, dict) and any(".modality_encoders." in k for k in state)
        hint = (": this looks like a fine-tuned model (its encoder sits under a prefix such as "
                "w2v_encoder.w2v_model.); load the pretrained ('No fine-tuning') checkpoint") if nested else ""
        raise CheckpointError(f"{what} is not a pretrained fairseq data2vec 2.0 (data2vec_multi) checkpoint: expected "
                              f"a dict with 'model' holding 'modality_encoders.*' keys, got {got}{hint}")
    ema = state.get("_ema", {})
    bad = [k for k, v in state.items() if k != "_ema" and not torch.is_tensor(v)] + (
        [f"_ema.{k}" for k, v in ema.items() if not torch.is_tensor(v)] if isinstance(ema, dict) else ["_ema"])
    if bad:
        raise CheckpointError(f"{what}: {_names(bad)} are not tensors")
    return state


def released_layout(cfg: Data2VecConfig) -> Data2VecConfig:
    """cfg with the released 2.0 configs' layout, which every released checkpoint has: their EMA sharing (speech:
    no CNN in the teacher) and, for text, learned absolute positions without ALiBi (tiny_v2 differs in both)."""
    from .presets import preset

    base = preset(cfg.modality, "base_v2")
    cfg = replace(cfg, ema=replace(cfg.ema, shared=base.ema.shared, teacher_input=base.ema.teacher_input))
    if cfg.modality == "text":
        cfg = replace(cfg, encoder=replace(cfg.encoder, positions=base.encoder.positions, alibi=base.encoder.alibi))
    return cfg


def load_fairseq_v2(source, modality: str, preset_name: str = "base_v2", cfg: Data2VecConfig | None = None):
    """A Data2Vec2 holding a fairseq data2vec 2.0 checkpoint (its student, decoder and `_ema` teacher).

    source: a checkpoint path, the dict `torch.load` returns, or its `["model"]` state dict;
    modality: "speech" | "image" | "text"; preset_name: the 2.0 preset of the checkpoint's size ("base_v2",
    "large_v2"); cfg: a config to use instead of the preset (e.g. with other dropouts), of the same sizes.
    The teacher sharing and text positions are set to the released configs' (`released_layout`).
    The model is returned in eval mode, fp32. Raises CheckpointError when the checkpoint does not fit."""
    from .data2vec2 import Data2Vec2
    from .presets import preset

    if modality not in FAIRSEQ_MODALITY:
        raise CheckpointError(f"unknown modality {modality!r}: expected one of {sorted(FAIRSEQ_MODALITY)}")
    cfg = cfg if cfg is not None else preset(modality, preset_name)
    if cfg.modality != modality:
        raise CheckpointError(f"cfg is a {cfg.modality} config, but modality={modality!r}")
    cfg = released_layout(cfg)
    _check_supported(cfg)
    state = read_checkpoint(source) if isinstance(source, (str, Path)) else _model_state(source, "the state dict")
    model = Data2Vec2(cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    converted = convert(state, cfg, shapes)
    missing = set(shapes) - set(converted) - {"teacher.num_updates"}
    assert not missing, f"fairseq_v2.key_map leaves {_names(missing)} unset"  # a bug here, not in the checkpoint
    model.load_state_dict(converted, strict=False)
    return model.eval()
