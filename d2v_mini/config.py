"""Configuration dataclasses for data2vec 1.0.

One `Data2VecConfig` describes a whole recipe: the encoder of one modality, how inputs are masked,
how the EMA teacher builds targets, the loss and the optimiser. Named presets (tiny / small / base /
large per modality) live in `presets.py`; a notebook edits fields directly, there is no YAML layer.

Every number of the paper's recipes is a default or a preset value here; where the paper and the
released code disagree (see `../shared/reference/data2vec-recipes.md` section 7), the released code is
the default and the paper's choice is a documented option.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Literal

from .errors import ConfigError
from .validate import validate_config, validate_section

Modality = Literal["speech", "image", "text"]


class _Checked:
    """Config sections check their field types and ranges when built (validate.py); `validate()`
    checks again after fields were edited in place."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        validate_section(self)


@dataclass
class TransformerConfig(_Checked):
    """The Transformer stack shared by the three modalities."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    norm_first: bool = False  # False: post-LN block (speech, text); True: pre-LN + final LN (vision)
    layer_scale_init: float = 0.0  # > 0: BEiT layer scale (gamma_1, gamma_2) with this initial value
    key_bias: bool = True  # False: BEiT's q/v bias only (the key projection has no bias)
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1  # residual-branch dropout
    attn_dropout: float = 0.1  # dropout on the attention probabilities
    activation_dropout: float = 0.0  # dropout after the FFN activation
    drop_path: float = 0.0  # stochastic depth, linearly increasing to this value in the last block
    layerdrop: float = 0.0  # fairseq layer drop: skip a whole block with this probability (training)
    init: Literal["released", "torch"] = "released"  # the released code's init per modality, or PyTorch's (init.py)


@dataclass
class SpeechConfig(TransformerConfig):
    """wav2vec 2.0 / data2vec speech encoder: conv feature encoder, conv positions, post-LN blocks."""

    # (channels, kernel, stride) of each conv layer: 20 ms hop, 25 ms receptive field at 16 kHz
    conv_layers: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    conv_bias: bool = False
    conv_pos_layers: int = 5  # number of stacked positional conv layers (HF: num_conv_pos_embeddings)
    conv_pos_kernel: int = 19  # kernel of each (fairseq: max(3, conv_pos // depth) = 95 // 5)
    conv_pos_groups: int = 16
    sample_rate: int = 16_000
    dropout_input: float = 0.0  # dropout on the projected features (fairseq dropout_input)


@dataclass
class ImageConfig(TransformerConfig):
    """BEiT-style ViT: patch embedding, CLS token, relative position bias, pre-LN blocks."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    rel_pos_bias: Literal["shared", "per_layer", "none"] = "shared"
    abs_pos_emb: bool = False
    final_norm: bool = True  # False: no final LayerNorm (HF `use_mean_pooling=True`, the fine-tuned encoders)


@dataclass
class TextConfig(TransformerConfig):
    """RoBERTa-style encoder: token + learned positions (offset by pad + 1), embedding LN."""

    vocab_size: int = 50_265
    max_positions: int = 514  # 512 usable positions + padding_idx + 1 (RoBERTa's offset)
    pad_idx: int = 1
    bos_idx: int = 0
    eos_idx: int = 2
    mask_idx: int = 50_264  # `<mask>` is the last id of the RoBERTa dictionary


EncoderConfig = SpeechConfig | ImageConfig | TextConfig


@dataclass
class MaskingConfig(_Checked):
    """How the student's input is masked.

    kind:
      - "span"  : wav2vec 2.0 spans (speech): `prob` of frames start a span of `length` frames.
      - "block" : BEiT block masking (vision): `num_patches` masked in blocks of >= `min_block` patches.
      - "bert"  : text: `prob` of tokens (in spans of `length`), 80/10/10 replace/random/unchanged.
    """

    kind: Literal["span", "block", "bert"] = "span"
    prob: float = 0.65
    length: int = 10
    min_masks: int = 1
    require_same_masks: bool = True  # same number of masked frames in every row (fairseq)
    # block masking (vision)
    num_patches: int = 120
    min_block: int = 16
    min_aspect: float = 0.3
    # text (BERT rule); the released data2vec text config uses 0.35 / length 4 / 0 / 0
    random_token_prob: float = 0.0
    leave_unmasked_prob: float = 0.0
    loss_on_all_selected: bool = False  # False: loss on `<mask>` positions only, as fairseq does


@dataclass
class TargetConfig(_Checked):
    """How the teacher's layer outputs become regression targets."""

    top_k: int = 8
    layer_norm: Literal["instance", "layer", "none"] = "instance"  # per layer, before averaging
    final_norm: Literal["layer", "instance", "none"] = "none"  # after averaging
    site: Literal["ffn", "end"] = "ffn"  # FFN output before the last residual, or end of block


@dataclass
class EMAConfig(_Checked):
    """The EMA teacher: decay linear from `decay_start` to `decay_end` over `anneal_steps`, then constant.

    `shared` names the encoder parts the teacher does not average but copies from the student after
    every update (fairseq's skip keys): "front_end" (CNN / patch embedding / token embeddings) and
    "positional" (conv positions / relative position bias). Everything else is averaged in fp32.
    """

    decay_start: float = 0.999
    decay_end: float = 0.9999
    anneal_steps: int = 30_000
    shared: tuple[str, ...] = ("front_end", "positional")
    teacher_input: Literal["raw", "student_features"] = "student_features"


@dataclass
class LossConfig(_Checked):
    """Regression loss on masked positions. beta = 0: L2; beta > 0: Smooth-L1 with that beta.

    reduction "sum": fairseq, summed over D, times `scale` (None = 1/sqrt(D)), divided by #masked;
    reduction "mean": BEiT/data2vec-vision, mean over every element, no scale.
    """

    beta: float = 0.0
    scale: float | None = None
    reduction: Literal["sum", "mean"] = "sum"
    head_layers: int = 1  # regression head: 1 = Linear(D, D); 2 = Linear(D, 2D) -> GELU -> Linear(2D, D)


@dataclass
class OptimConfig(_Checked):
    """Optimiser and schedule. The `batch_size` here is what one step sees on the preset's hardware."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    # which parameters decay: "released" = fairseq all (speech, text) / BEiT's groups (image); "no_1d" = none of
    # the 1-D parameters, biases, tokens and position tables (schedule.decays)
    decay_groups: Literal["released", "no_1d"] = "released"
    schedule: Literal["cosine", "tri_stage", "constant"] = "tri_stage"
    warmup_steps: int = 12_000
    total_steps: int = 400_000
    tri_stage_ratios: tuple[float, float, float] = (0.03, 0.9, 0.07)
    tri_stage_decay: Literal["exponential", "linear"] = "exponential"  # fairseq code vs paper wording
    min_lr_ratio: float = 0.01
    clip_norm: float = 0.0  # 0 = no clipping
    # the global batch of one step: clips / images / blocks, split into world x accum_steps micro-batches;
    # with max_tokens > 0 it counts micro-batches instead (fairseq: GPUs x update_freq) = world x accum_steps
    batch_size: int = 8
    accum_steps: int = 1
    # speech: > 0 batches by total samples (fairseq `max_tokens`, d2v_mini/batching.py): each micro-batch
    # holds at most max_tokens samples (clips x longest cropped clip); 0 = a fixed number of clips
    max_tokens: int = 0


@dataclass
class GuardConfig(_Checked):
    """fairseq's collapse guard: after `after_steps` updates, stop if the variances fall below these."""

    min_target_var: float = 0.1
    min_pred_var: float = 0.01
    after_steps: int = 5000


@dataclass
class Data2VecConfig:
    modality: Modality
    encoder: EncoderConfig
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    crop: int = 0  # speech: samples per crop; text: tokens per block; 0 = modality default
    # speech pretraining batches (fairseq RawAudioDataset): clips under `min_crop` samples are dropped
    # (min_sample_size) or, with short_clips="chain", chained with random others up to that length
    # (data.ChainedClips: for corpora of short words); each batch is then cropped to its shortest clip
    # (pad=False), or padded to its longest with pad_batches=True (evaluation always pads)
    min_crop: int = 0
    short_clips: Literal["drop", "chain"] = "drop"
    pad_batches: bool = False
    name: str = ""  # preset name, informational
    version: int = 1  # 2: data2vec 2.0 (config_v2.py: 2.0 encoder config and the `v2` section)
    v2: "V2Config | None" = None  # noqa: F821

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the first field of the wrong type or out of range."""
        validate_config(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Data2VecConfig":
        encoders = {"speech": SpeechConfig, "image": ImageConfig, "text": TextConfig}
        if not isinstance(d, dict) or d.get("modality") not in encoders:
            got = repr(d.get("modality")) if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"a config dict needs modality in {list(encoders)}, got {got}")
        sub = {"encoder": encoders[d["modality"]], "masking": MaskingConfig, "targets": TargetConfig,
               "ema": EMAConfig, "loss": LossConfig, "optim": OptimConfig, "guard": GuardConfig}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}: expected {[f.name for f in fields(cls)]}")
        if d.get("version", 1) == 2:
            from .config_v2 import ENCODER_CONFIGS_V2, build_v2
            sub.update(encoder=ENCODER_CONFIGS_V2[d["modality"]], v2=build_v2)
        kw = {k: (sub[k](v) if k == "v2" else _build(sub[k], v)) if k in sub and v is not None else v
              for k, v in d.items()}
        return cls(**kw)


def _build(klass, d: dict):
    """Rebuild a dataclass from `asdict` output, turning JSON lists back into tuples."""
    kw = {}
    for f in fields(klass):
        if f.name in d:
            v = d[f.name]
            kw[f.name] = _tuplify(v) if isinstance(v, list) else v
    return klass(**kw)


def _tuplify(v):
    return tuple(_tuplify(x) if isinstance(x, list) else x for x in v)


def override(cfg, **changes):
    """`dataclasses.replace` that also accepts nested keys: override(cfg, **{"optim.lr": 1e-3})."""
    top, nested = {}, {}
    for k, v in changes.items():
        head, _, rest = k.partition(".")
        (nested.setdefault(head, {}).__setitem__(rest, v) if rest else top.__setitem__(head, v))
    names = {f.name for f in fields(cfg)}
    unknown = sorted(set(top) - names) + sorted(f"{h}.*" for h in set(nested) - names)
    if unknown:
        raise ConfigError(f"{type(cfg).__name__} has no field {', '.join(unknown)}: expected one of {sorted(names)}")
    for head, sub in nested.items():
        child = getattr(cfg, head)
        if not is_dataclass(child):
            raise ConfigError(f"{head} is not a config section: set it with override(cfg, {head}=...)")
        top[head] = override(child, **sub)
    for name, value in top.items():  # a JSON / CLI list for a tuple field (ema.shared, conv_layers) is stored as
        if isinstance(value, list) and isinstance(getattr(cfg, name), tuple):  # the tuple a checkpoint reloads
            top[name] = _tuplify(value)
    return replace(cfg, **top)


def fit_schedules(cfg, steps: int):
    """cfg with its schedules spanning a run of `steps` optimizer updates: the LR schedule's
    total_steps = steps (warm-up capped at a tenth of the run, at least 1) and the EMA anneal over at
    most `steps` updates (a constant tau stays constant). A short run then ends where the recipe's
    schedules end (tau at decay_end, the LR decayed), instead of stopping part-way through them."""
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ConfigError(f"steps must be a positive integer (the run's optimizer updates), got {steps!r}")
    o, e = cfg.optim, cfg.ema
    return override(cfg, **{"optim.total_steps": steps, "optim.warmup_steps": min(o.warmup_steps, max(1, steps // 10)),
                            "ema.anneal_steps": min(e.anneal_steps, steps) if e.anneal_steps else 0})
