"""Parity with the released data2vec 1.0 encoders through Hugging Face `transformers`.

    enc = from_transformers(hf_model)                   # Data2Vec{Audio,Vision,Text}Model (or a task model)
    hf = to_transformers(enc)                            # back: the same weights, the same outputs
    enc = load_pretrained("facebook/data2vec-audio-base")  # download through transformers (online), convert
    y = teacher_targets(enc, x)                          # [B, T, D]: what a data2vec teacher built from `enc` predicts
    diffs = parity(enc, hf, x)                           # largest |ours - HF| over last_hidden_state / hidden_states

Mapping (names in `hf_keys.key_map`): speech `num_conv_pos_embeddings` is the number of positional conv layers
and `conv_pos_kernel_size` their kernel; vision keys have no bias, layer scale `lambda_{1,2}` is our `gamma{1,2}`,
`layer_norm_eps` comes from the config (HF's default 1e-12 is not BEiT's 1e-6); `use_mean_pooling=True` (the
fine-tuned vision encoders) means no final LayerNorm (`ImageConfig.final_norm=False`); text positions start at
pad + 1 in both, and HF's token-type row 0 (added to every token) is folded into our position table.

HF tensors a d2v_mini encoder does not represent (the text pooler, the vision pooler LayerNorm, HF's token-type
table, the HF config) are kept on the converted encoder as the plain attribute `encoder.hf_extra` and written back
by `to_transformers`, so HF -> d2v_mini -> HF reproduces the HF state dict exactly. `hf_extra` is not part of
`encoder.state_dict()`: without it (a re-loaded checkpoint, a native d2v_mini encoder) `to_transformers` writes
the folded position table and a zero token-type row, which computes the same function. If the encoder was
changed after import (fine-tuning), the folded table is exported and token types keep their offsets to type 0.
When the HF model has no mask embedding (`masked_spec_embed` needs `mask_time_prob > 0`; vision needs
`use_mask_token=True`), the converted encoder keeps its freshly initialised `mask_emb` / `mask_token`.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from .config import Data2VecConfig, ImageConfig, SpeechConfig, TargetConfig, TextConfig
from .encoder import Encoder, build_encoder
from .hf_keys import HF_MODEL_TYPES, config_from_hf, config_to_hf, key_map
from .targets import build_targets, target_layers

__all__ = ["RELEASED", "from_transformers", "to_transformers", "load_pretrained", "teacher_targets", "parity",
           "config_from_hf", "config_to_hf", "key_map"]

# Hub names of released data2vec 1.0 checkpoints (a fine-tuned model's encoder is converted without its head)
RELEASED = {
    "speech": ("facebook/data2vec-audio-base", "facebook/data2vec-audio-base-960h", "facebook/data2vec-audio-large",
               "facebook/data2vec-audio-large-960h"),
    "image": ("facebook/data2vec-vision-base", "facebook/data2vec-vision-base-ft1k", "facebook/data2vec-vision-large",
              "facebook/data2vec-vision-large-ft1k"),
    "text": ("facebook/data2vec-text-base",),
}
OPTIONAL = ("mask_emb", "mask_token")  # may be absent from an HF model: ours then keep their initial values
_TOKEN_TYPE, _POSITIONS = "embeddings.token_type_embeddings.weight", "embeddings.position_embeddings.weight"


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("d2v_mini.hf needs Hugging Face transformers: pip install 'd2v_mini[hf]' "
                          "(or pip install transformers)") from e
    return transformers


def _modality(cfg) -> str:
    for klass, name in ((SpeechConfig, "speech"), (ImageConfig, "image"), (TextConfig, "text")):
        if isinstance(cfg, klass):
            return name
    raise TypeError(f"expected a d2v_mini encoder config, got {type(cfg).__name__}")


def from_transformers(hf_model) -> Encoder:
    """A d2v_mini encoder with the weights of `hf_model` (Data2Vec{Audio,Vision,Text}Model, or a task model
    such as Data2VecAudioForCTC, whose encoder is taken) and a config derived from the HF config.
    Same device and train/eval mode as `hf_model`; float32 parameters."""
    _transformers()
    base = getattr(hf_model, "base_model", hf_model)
    cfg = config_from_hf(base.config)
    enc = build_encoder(cfg)
    theirs = {k: v.detach() for k, v in base.state_dict().items()}
    mapping, ours = key_map(cfg), enc.state_dict()
    assert set(mapping) == set(ours), f"key map out of date: {sorted(set(mapping) ^ set(ours))}"
    missing = [h for k, h in mapping.items() if h not in theirs and k not in OPTIONAL]
    if missing:
        raise KeyError(f"the HF model has no {missing[:5]} (config {type(base.config).__name__}): not a data2vec "
                       f"1.0 encoder layout d2v_mini knows")
    new = {k: theirs[h] if h in theirs else ours[k] for k, h in mapping.items()}
    used = set(mapping.values())
    extra = {"config": copy.deepcopy(base.config),
             "unmapped": {h: v.clone() for h, v in theirs.items() if h not in used}}
    if isinstance(cfg, TextConfig):  # HF adds token_type_embeddings[0] to every token (token_type_ids = 0)
        pos, tt = theirs[_POSITIONS], theirs[_TOKEN_TYPE]
        new["positions.weight"] = pos.float() + tt[0].float()
        extra["position_embeddings"] = pos.clone()  # for an exact HF -> ours -> HF round trip
    enc.load_state_dict(new, strict=True)
    enc.hf_extra = extra
    device = next(base.parameters()).device
    return enc.to(device).train(base.training)


def to_transformers(encoder: Encoder, attn_implementation: str | None = None):
    """The HF Data2Vec{Audio,Vision,Text}Model computing what `encoder` computes (same weights, same device and
    train/eval mode). `attn_implementation`: "eager" / "sdpa" / None (the transformers default)."""
    tf = _transformers()
    cfg, sd = encoder.cfg, encoder.state_dict()
    extra = getattr(encoder, "hf_extra", None) or {}
    unmapped = dict(extra.get("unmapped", {}))
    type_vocab = 1
    if isinstance(cfg, TextConfig):
        pos, tt, orig = sd["positions.weight"], unmapped.pop(_TOKEN_TYPE, None), extra.get("position_embeddings")
        if tt is not None and orig is not None and torch.equal(pos.cpu(), orig.float().cpu() + tt[0].float().cpu()):
            pos_hf, tt_hf = orig, tt  # unchanged since import: restore HF's split exactly
        elif tt is not None:
            pos_hf, tt_hf = pos, tt - tt[0]  # folded positions; other token types keep their offset to type 0
        else:
            pos_hf, tt_hf = pos, torch.zeros(1, cfg.dim)
        type_vocab = tt_hf.shape[0]
    hf_cfg = config_to_hf(cfg, extra.get("config"), type_vocab_size=type_vocab)
    if attn_implementation is not None:
        hf_cfg._attn_implementation = attn_implementation
    klass = {"speech": tf.Data2VecAudioModel, "image": tf.Data2VecVisionModel, "text": tf.Data2VecTextModel}
    modality = _modality(cfg)
    kw = {} if modality == "speech" else {"add_pooling_layer": any(k.startswith("pooler.") for k in unmapped)}
    model = klass[modality](hf_cfg, **kw)
    target = model.state_dict()
    mapping = key_map(cfg)
    missing = [h for k, h in mapping.items() if h not in target and k not in OPTIONAL]
    assert not missing, f"HF model lacks {missing[:5]}: key map out of date"
    new = {h: sd[k] for k, h in mapping.items() if h in target}
    new.update({k: v for k, v in unmapped.items() if k in target})
    if modality == "text":
        new[_POSITIONS], new[_TOKEN_TYPE] = pos_hf, tt_hf
    model.load_state_dict(new, strict=True)
    device = next(encoder.parameters()).device
    return model.to(device).train(encoder.training)


def load_pretrained(name: str, **kwargs) -> Encoder:
    """Download a released data2vec 1.0 checkpoint through `transformers.AutoModel.from_pretrained(name)` (online,
    or from the local HF cache / a local directory) and convert it with `from_transformers`. For a fine-tuned
    checkpoint (e.g. facebook/data2vec-audio-base-960h) the encoder is converted and the head dropped.
    `kwargs` go to `from_pretrained` (cache_dir, revision, ...). Returns the encoder in eval mode."""
    tf = _transformers()
    try:
        model = tf.AutoModel.from_pretrained(name, **kwargs)
    except OSError as e:
        from huggingface_hub import constants
        why = ("offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and it is not in the local HF cache"
               if constants.HF_HUB_OFFLINE else "the Hugging Face Hub could not be reached, or has no such model")
        raise RuntimeError(
            f"load_pretrained({name!r}) could not load the checkpoint: {why}. It needs internet access to "
            f"huggingface.co the first time (later calls use the HF cache). To get the weights otherwise, on a "
            f"machine with internet run `hf download {name} --local-dir DIR` (older huggingface_hub: "
            f"`huggingface-cli download`), copy DIR here and call load_pretrained('DIR'), or copy that machine's "
            f"HF cache (~/.cache/huggingface) and set HF_HOME to it. Released names: {RELEASED}. "
            f"transformers said: {e}") from e
    if getattr(model.config, "model_type", None) not in HF_MODEL_TYPES:
        raise ValueError(f"{name!r} is a {getattr(model.config, 'model_type', '?')} model, not a data2vec 1.0 "
                         f"encoder (model_type in {sorted(HF_MODEL_TYPES)})")
    return from_transformers(model.eval())


def teacher_targets(encoder: Encoder, x: Tensor, cfg: TargetConfig | Data2VecConfig | str | None = None,
                    padding_mask: Tensor | None = None) -> Tensor:
    """The regression targets a data2vec teacher with these weights builds for `x` (no masking, eval mode,
    no gradient): the average of its top-K normalised layer outputs, `targets.build_targets`.

    x: the encoder input (speech [B, N] waveform, images [B, C, H, W], tokens [B, T]); padding_mask as for the
    encoder. cfg: a TargetConfig, a Data2VecConfig, or a preset name of the encoder's modality (None: "base",
    the released recipe: speech top 8 FFN outputs, instance norm; images top 6 block outputs, layer norm twice;
    text top 10 FFN outputs, layer norm). Returns float32 [B, T, D] over the feature grid (speech frames,
    image patches without CLS, tokens); padded frames carry no meaning."""
    if cfg is None or isinstance(cfg, str):
        from .presets import preset
        cfg = preset(_modality(encoder.cfg), cfg or "base").targets
    elif isinstance(cfg, Data2VecConfig):
        cfg = cfg.targets
    if not isinstance(cfg, TargetConfig):
        raise TypeError(f"cfg must be a TargetConfig, a Data2VecConfig or a preset name, got {type(cfg).__name__}")
    was_training = encoder.training
    try:
        with torch.no_grad():
            out = encoder.eval()(x, None, padding_mask)
            layers = target_layers(out, cfg)
            if encoder.has_cls:
                layers = [t[:, 1:] for t in layers]
            return build_targets(layers, cfg, out.padding_mask)
    finally:
        encoder.train(was_training)


def parity(encoder: Encoder, hf_model, x: Tensor, padding_mask: Tensor | None = None,
           mask: Tensor | None = None) -> dict[str, float]:
    """Run both models (in their current modes) on the same input and return the largest absolute difference of
    `last_hidden_state` and of any entry of `hidden_states`. x, padding_mask, mask: as for `encoder`
    (mask: bool [B, T] over the feature grid, True = masked; text: tokens replaced by `<mask>`)."""
    modality = _modality(encoder.cfg)
    base = getattr(hf_model, "base_model", hf_model)
    with torch.no_grad():
        ours = encoder(x, mask, padding_mask)
        if modality == "speech":
            attn = None if padding_mask is None else (~padding_mask).long()
            theirs = base(input_values=x, attention_mask=attn, mask_time_indices=mask, output_hidden_states=True)
        elif modality == "image":
            theirs = base(pixel_values=x, bool_masked_pos=mask, output_hidden_states=True)
        else:
            pm = x.eq(encoder.cfg.pad_idx) if padding_mask is None else padding_mask
            tokens = x if mask is None else x.masked_fill(mask, encoder.cfg.mask_idx)
            theirs = base(input_ids=tokens, attention_mask=(~pm).long(), output_hidden_states=True)
    if len(ours.hidden_states) != len(theirs.hidden_states):
        raise ValueError(f"{len(ours.hidden_states)} hidden states here, {len(theirs.hidden_states)} in HF")
    diff = lambda a, b: (a.float() - b.float()).abs().max().item()  # noqa: E731
    return {"last_hidden_state": diff(ours.last_hidden_state, theirs.last_hidden_state),
            "hidden_states": max(diff(a, b) for a, b in zip(ours.hidden_states, theirs.hidden_states))}
