"""Config validation: every field's type (from the dataclass annotations) and range, checked when a
config section is built (`__post_init__`, so presets, `override`, `dataclasses.replace` and
`Data2VecConfig.from_dict` all check) and again by `Data2VecConfig.validate()`, which `Data2Vec(cfg)`
and `pretrain` call (a notebook may have edited fields in place since).

    OptimConfig(schedule="cosin")
    ConfigError: optim.schedule must be 'cosine', 'tri_stage' or 'constant', got 'cosin'

Ranges live in RULES, next to nothing else: (section class name, field) -> (test, what it expects).
A subclass section (the data2vec 2.0 encoder configs of config_v2.py) has the rules and cross-checks
of its 1.0 class plus its own: `_lineage` walks the class hierarchy.
"""
from __future__ import annotations

import math
import typing
from dataclasses import fields, is_dataclass
from functools import lru_cache
from types import UnionType
from typing import Any, Callable, Literal

from .errors import ConfigError

# the name of each section inside Data2VecConfig (used in messages: "optim.lr")
SECTION = {"TransformerConfig": "encoder", "SpeechConfig": "encoder", "ImageConfig": "encoder",
           "TextConfig": "encoder", "MaskingConfig": "masking", "TargetConfig": "targets", "EMAConfig": "ema",
           "LossConfig": "loss", "OptimConfig": "optim", "GuardConfig": "guard", "Data2VecConfig": "cfg",
           "V2Config": "v2", "DecoderConfig": "v2.decoder"}

_pos = (lambda v: v > 0, "> 0")
_nonneg = (lambda v: v >= 0, ">= 0")
_unit = (lambda v: 0 <= v <= 1, "in [0, 1]")
_prob = (lambda v: 0 <= v < 1, "in [0, 1)")

ENCODER_RULES = {"dim": _pos, "depth": _pos, "heads": _pos, "ffn_dim": _pos, "layer_scale_init": _nonneg,
                 "layer_norm_eps": _pos, "dropout": _prob, "attn_dropout": _prob, "activation_dropout": _prob,
                 "drop_path": _unit, "layerdrop": _unit}
RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "TransformerConfig": ENCODER_RULES,
    "SpeechConfig": {**ENCODER_RULES, "conv_layers": (lambda v: len(v) > 0 and all(x > 0 for layer in v for x in layer),
                                                      "a non-empty tuple of (channels, kernel, stride) > 0"),
                     "conv_pos_layers": _pos, "conv_pos_kernel": _pos, "conv_pos_groups": _pos,
                     "sample_rate": _pos, "dropout_input": _prob},
    "ImageConfig": {**ENCODER_RULES, "image_size": _pos, "patch_size": _pos, "in_chans": _pos},
    "TextConfig": {**ENCODER_RULES, "vocab_size": _pos, "max_positions": _pos, "pad_idx": _nonneg,
                   "bos_idx": _nonneg, "eos_idx": _nonneg, "mask_idx": _nonneg},
    "MaskingConfig": {"prob": _unit, "length": _pos, "min_masks": _nonneg, "num_patches": _nonneg,
                      "min_block": _pos, "min_aspect": ((lambda v: 0 < v <= 1), "in (0, 1]"),
                      "random_token_prob": _unit, "leave_unmasked_prob": _unit},
    "TargetConfig": {"top_k": _pos},
    "EMAConfig": {"decay_start": _unit, "decay_end": _unit, "anneal_steps": _nonneg,
                  "shared": (lambda v: set(v) <= {"front_end", "positional"},
                             "a subset of ('front_end', 'positional')")},
    "LossConfig": {"beta": _nonneg, "scale": (lambda v: v is None or v > 0, "None or > 0"),
                   "head_layers": (lambda v: v in (1, 2), "1 or 2")},
    "OptimConfig": {"lr": _pos, "betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values in [0, 1)"),
                    "eps": _pos, "weight_decay": _nonneg, "warmup_steps": _nonneg, "total_steps": _pos,
                    "tri_stage_ratios": (lambda v: len(v) == 3 and min(v) >= 0 and abs(sum(v) - 1) < 1e-6,
                                         "three fractions >= 0 summing to 1"),
                    "min_lr_ratio": _unit, "clip_norm": _nonneg, "batch_size": _pos, "accum_steps": _pos,
                    "max_tokens": _nonneg},
    "GuardConfig": {"min_target_var": _nonneg, "min_pred_var": _nonneg, "after_steps": _nonneg},
    "Data2VecConfig": {"crop": _nonneg, "min_crop": _nonneg, "version": (lambda v: v in (1, 2), "1 or 2")},
    # data2vec 2.0 (config_v2.py); SpeechConfig2 etc. also get their 1.0 class's rules (_lineage)
    "SpeechConfig2": {"version": (lambda v: v == 2, "2"), "prenet_depth": _nonneg},
    "ImageConfig2": {"version": (lambda v: v == 2, "2"), "prenet_depth": _nonneg},
    "TextConfig2": {"version": (lambda v: v == 2, "2"), "prenet_depth": _nonneg},
    "V2Config": {"clone_batch": _pos, "mask_prob": _prob, "mask_length": _pos, "mask_prob_adjust": _nonneg,
                 "mask_noise_std": _nonneg, "cls_loss": _nonneg},
    "DecoderConfig": {"dim": _pos, "kernel": (lambda v: v > 0 and v % 2 == 1, "an odd number > 0 (padding k // 2 "
                                              "keeps the length)"),
                      "layers": _nonneg, "groups": _pos, "projection_layers": (lambda v: v in (1, 2), "1 or 2"),
                      "input_dropout": _prob},
}
MASKING_KIND = {"speech": "span", "image": "block", "text": "bert"}
MASK_KIND_V2 = {"speech": "block_1d", "image": "inverse_block_2d", "text": "random"}


def _lineage(klass) -> list[str]:
    """The names of `klass` and its config bases, most general first (ImageConfig2 ->
    [TransformerConfig, ImageConfig, ImageConfig2])."""
    return [k.__name__ for k in reversed(klass.__mro__) if k.__name__ in RULES or k.__name__ in SECTION]


@lru_cache(maxsize=None)
def _rules(klass) -> dict:
    return {f: r for name in _lineage(klass) for f, r in RULES.get(name, {}).items()}


@lru_cache(maxsize=None)
def _hints(klass) -> dict:
    # Data2VecConfig.v2 is annotated "V2Config | None", a class config.py cannot import (config_v2 imports it)
    from . import config_v2

    return typing.get_type_hints(klass, localns={"V2Config": config_v2.V2Config,
                                                 "DecoderConfig": config_v2.DecoderConfig})


def _type_ok(value, hint) -> tuple[bool, str]:
    """Does `value` fit the annotation `hint`? Returns (ok, what was expected)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        names = [repr(a) for a in args]
        return value in args, names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    if origin in (typing.Union, UnionType):
        results = [_type_ok(value, a) for a in args]
        return any(ok for ok, _ in results), " or ".join(w for _, w in results)
    if hint is type(None):
        return value is None, "None"
    if hint is bool:
        return isinstance(value, bool), "True or False"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, "a finite number"
    if hint is str:
        return isinstance(value, str), "a string"
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False, f"a tuple ({hint})"
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return False, f"a tuple of {len(items)} ({hint})"
        return all(_type_ok(v, a)[0] for v, a in zip(value, items)), f"{hint}".replace("typing.", "")
    return True, ""  # anything else (a nested section) is checked on its own


def validate_section(section) -> None:
    """Check one config section (a dataclass of config.py): field types, then ranges (RULES)."""
    lineage = _lineage(type(section)) or [type(section).__name__]
    prefix = next((SECTION[n] for n in reversed(lineage) if n in SECTION), lineage[-1])
    hints, rules = _hints(type(section)), _rules(type(section))
    for f in fields(section):
        value = getattr(section, f.name)
        if is_dataclass(value):
            continue
        ok, expected = _type_ok(value, hints[f.name])
        if not ok:
            raise ConfigError(f"{prefix}.{f.name} must be {expected}, got {value!r} ({type(value).__name__})")
        rule = rules.get(f.name)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{prefix}.{f.name} must be {rule[1]}, got {value!r}")
    for name in lineage:
        _cross_checks(section, name, prefix)


def _cross_checks(s, name: str, prefix: str) -> None:
    if name == "TransformerConfig" and s.dim % s.heads:
        raise ConfigError(f"{prefix}.dim = {s.dim} is not divisible by {prefix}.heads = {s.heads}")
    if name == "SpeechConfig" and s.dim % s.conv_pos_groups:
        raise ConfigError(f"{prefix}.dim = {s.dim} is not divisible by conv_pos_groups = {s.conv_pos_groups}")
    if name == "ImageConfig" and s.image_size % s.patch_size:
        raise ConfigError(f"{prefix}.image_size = {s.image_size} is not a multiple of patch_size = {s.patch_size}")
    if name == "TextConfig":
        if s.max_positions <= s.pad_idx + 1:
            raise ConfigError(f"{prefix}.max_positions = {s.max_positions} leaves no position after pad_idx + 1 "
                              f"= {s.pad_idx + 1} (RoBERTa's offset): use max_positions = tokens per block "
                              f"+ pad_idx + 1")
        for k in ("pad_idx", "bos_idx", "eos_idx", "mask_idx"):
            if getattr(s, k) >= s.vocab_size:
                raise ConfigError(f"{prefix}.{k} = {getattr(s, k)} is not a token id of a {s.vocab_size}-token "
                                  f"vocabulary: the tokenizer puts <mask> at vocab_size - 1")
    if name in ("SpeechConfig2", "ImageConfig2", "TextConfig2") and s.prenet_depth >= s.depth:
        raise ConfigError(f"{prefix}.prenet_depth = {s.prenet_depth} leaves no shared block of depth = {s.depth}: "
                          f"use prenet_depth < depth (depth counts the prenet blocks)")
    if name == "DecoderConfig" and s.dim % s.groups:
        raise ConfigError(f"{prefix}.dim = {s.dim} is not divisible by {prefix}.groups = {s.groups}")
    if name == "MaskingConfig" and s.random_token_prob + s.leave_unmasked_prob > 1:
        raise ConfigError(f"masking.random_token_prob + masking.leave_unmasked_prob = "
                          f"{s.random_token_prob + s.leave_unmasked_prob:g}: expected <= 1")


def validate_config(cfg) -> None:
    """Check a whole Data2VecConfig: every section (again: fields may have been edited in place), then
    what ties them together (encoder type, masking kind and top_k against the modality and depth)."""
    from .config import ImageConfig, SpeechConfig, TextConfig
    from .config_v2 import ENCODER_CONFIGS_V2, V2Config

    encoders = {1: {"speech": SpeechConfig, "image": ImageConfig, "text": TextConfig}, 2: ENCODER_CONFIGS_V2}
    if cfg.modality not in encoders[1]:
        raise ConfigError(f"cfg.modality = {cfg.modality!r}: expected one of {list(encoders[1])}")
    validate_section(cfg)  # its own fields (version, crop, name, ...) first: `version` picks the encoder class
    want = encoders[cfg.version][cfg.modality]
    if type(cfg.encoder) is not want:
        hint = " (data2vec 2.0: presets '*_v2', d2v_mini/config_v2.py)" if cfg.version == 2 else \
            " (a 2.0 encoder config needs version=2 and a v2 section)" if type(cfg.encoder).__name__.endswith("2") else ""
        raise ConfigError(f"cfg.encoder is a {type(cfg.encoder).__name__}, but modality {cfg.modality!r} of version "
                          f"{cfg.version} needs a {want.__name__}{hint}")
    if (cfg.version == 2) != isinstance(cfg.v2, V2Config):
        raise ConfigError(f"cfg.v2 is {type(cfg.v2).__name__} with version = {cfg.version}: data2vec 2.0 (version=2) "
                          f"needs a V2Config section (config_v2.py), 1.0 (version=1) needs v2=None")
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            validate_section(value)
    if cfg.version == 2:
        _validate_v2(cfg)
        return
    kind = MASKING_KIND[cfg.modality]
    if cfg.masking.kind != kind:
        raise ConfigError(f"masking.kind = {cfg.masking.kind!r} does not fit modality {cfg.modality!r}: "
                          f"{cfg.modality} uses {kind!r} ({MASKING_KIND})")
    if cfg.targets.top_k > cfg.encoder.depth:
        raise ConfigError(f"targets.top_k = {cfg.targets.top_k} but the encoder has only {cfg.encoder.depth} blocks "
                          f"(encoder.depth): use top_k <= depth")
    if cfg.modality == "image" and cfg.masking.num_patches > (cfg.encoder.image_size // cfg.encoder.patch_size) ** 2:
        n = (cfg.encoder.image_size // cfg.encoder.patch_size) ** 2
        raise ConfigError(f"masking.num_patches = {cfg.masking.num_patches} but a {cfg.encoder.image_size}-pixel "
                          f"image has only {n} patches of {cfg.encoder.patch_size}")


def _validate_v2(cfg) -> None:
    """What ties a data2vec 2.0 config together (`masking` is unused by 2.0: cfg.v2 holds the masks)."""
    v2, enc = cfg.v2, cfg.encoder
    validate_section(v2.decoder)
    kind = MASK_KIND_V2[cfg.modality]
    if v2.mask_kind != kind:
        raise ConfigError(f"v2.mask_kind = {v2.mask_kind!r} does not fit modality {cfg.modality!r}: "
                          f"{cfg.modality} uses {kind!r} ({MASK_KIND_V2})")
    shared = enc.depth - enc.prenet_depth
    if cfg.targets.top_k > shared:
        raise ConfigError(f"targets.top_k = {cfg.targets.top_k} but the encoder has only {shared} shared blocks "
                          f"(encoder.depth {enc.depth} - prenet_depth {enc.prenet_depth}; prenet blocks never give "
                          f"targets): use top_k <= {shared}")
    if enc.dim % v2.decoder.groups:
        raise ConfigError(f"encoder.dim = {enc.dim} is not divisible by v2.decoder.groups = {v2.decoder.groups} "
                          f"(the decoder's first conv reads encoder.dim channels)")
    if v2.decoder.conv2d != (cfg.modality == "image"):
        raise ConfigError(f"v2.decoder.conv2d = {v2.decoder.conv2d} does not fit modality {cfg.modality!r}: "
                          f"only images use a 2-D decoder over the patch grid")
