"""Named presets: `tiny` (CPU, well under a second per step), `small` (one GPU), and the paper's
`base` / `large` for each modality. `base_paper` presets give the paper's choices where the released
code differs (vision: FFN-output targets, shared front end, 40 warm-up epochs, drop path 0.2; text:
BERT 15% 80/10/10 masking, tau_n = 100k, tri-stage schedule).

Released checkpoints (data2vec 1.0, Hugging Face hub, `RELEASED_CHECKPOINTS`): speech base and large, image
base and large, text base. No text large was released: `preset("text", "large")` is RoBERTa-large's shape
(354.3M) trained with the base recipe, with no checkpoint or recipe of the paper's to compare with. tiny and
small are d2v_mini's own scales.

Sources: ../shared/reference/data2vec-recipes.md sections 3.1 (speech), 3.2 (vision), 3.3 (text).

What one optimizer update holds (`batching.describe_update`, the `update` column of `d2v_mini presets`):
| speech preset | batching                     | one update                                                     |
|---------------|------------------------------|----------------------------------------------------------------|
| base, large   | by samples: max_tokens 3.8M  | 16 batches of <= 3.8M samples = 60.8M samples (63.3 min of     |
|               | per batch, batch_size 16     | 16 kHz audio): fairseq's 16 GPUs x 1 batch; with G GPUs set    |
|               | batches per update           | accum_steps = 16 / G (one GPU: 16)                             |
| small         | by clips: batch_size 16      | 16 clips cropped to <= 4 s: at most 1.02M samples (1.1 min)    |
| tiny          | by clips: batch_size 16      | 16 utterances of chained FSDD clips, cropped to 2 s: 512k samples |
The pretraining collator crops each batch to its shortest clip, so a batch never holds more than its budget.

    cfg = preset("speech", "base");  model = Data2Vec(cfg)

The `small` presets are the GPU profile of the notebooks: SMALL_STEPS updates (= notebook.SCALE["small"] x the
notebooks' 300 tiny steps), sized with `scaling.flops_per_sample` so that one notebook's pretraining costs at most
SMALL_BUDGET_FLOPS: 10 minutes of a T4 at an ASSUMED sustained 20 TFLOP/s in fp16 (31% of its 65 TFLOP/s peak),
i.e. about 3.3 minutes of an A100 at an assumed 60 TFLOP/s in bf16 (small models do not fill an A100); the rest of
the 15 / 5 minutes is data preparation and probes. Not measured: no GPU was available when they were sized.
| small  | model                    | one update         | GFLOPs / sample  | 3000 updates      | data              |
|--------|--------------------------|--------------------|------------------|-------------------|-------------------|
| speech | 8 x 512, CNN of base     | 16 crops of <= 4 s | ~105             | 5.0 PF, ~4.2 min  | LibriSpeech 100 h |
| image  | ViT 8 x 384, 32 px, 4 px | 256 images         | ~7.6             | 5.9 PF, ~4.9 min  | Fashion-MNIST     |
| text   | 8 x 512, GPT-2 BPE       | 32 blocks of 256   | ~56              | 5.4 PF, ~4.5 min  | WikiText-103      |
(PF = 1e15 FLOPs; minutes on the assumed T4; data: pipeline.SMALL_DATASETS.)
EMA: tau 0.998 -> 0.999 over the run (a horizon 1 / (1 - tau) of 1000 updates, a third of the run).
"""
from __future__ import annotations

from dataclasses import replace

from .config import (Data2VecConfig, EMAConfig, GuardConfig, ImageConfig, LossConfig, MaskingConfig, OptimConfig,
                     SpeechConfig, TargetConfig, TextConfig)
from .presets_v2 import PRESETS_V2

IMAGENET_TRAIN = 1_281_167
SMALL_STEPS = 3000  # the GPU profile's run (notebook.SCALE["small"] x 300)
SMALL_BUDGET_FLOPS = 20e12 * 600  # 10 min of a T4 at an assumed sustained 20 TFLOP/s (fp16)
SMALL_EMA = EMAConfig(decay_start=0.998, decay_end=0.999, anneal_steps=SMALL_STEPS)
# fairseq's thresholds, checked after the warm-up and within the first sixth of the small run
SMALL_GUARD = GuardConfig(min_target_var=0.1, min_pred_var=0.01, after_steps=500)
NO_GUARD = GuardConfig(min_target_var=0.0, min_pred_var=0.0)  # no collapse check (no preset uses it)

# Collapse guard (train.py stops with CollapseError): every preset has one. target_var / pred_var are fairseq's
# statistics, the std of each channel across the masked positions of a batch, averaged over channels. Every
# modality's targets are normalised to unit scale (speech: instance norm over time; text, images: layer norm over
# channels), so a healthy target_var is O(1) everywhere and a collapsed teacher gives sqrt(1e-6) = 0.001.
# base / large / small / base_paper: fairseq's 0.1 / 0.01 after 5000 updates (data2vec_audio; data2vec 2.0 text).
# The released v1 text and vision code have no guard (data2vec 2.0 vision sets 0 / 0): kept here, as their targets
# have the same unit scale.
PAPER_GUARD = GuardConfig(min_target_var=0.1, min_pred_var=0.01, after_steps=5000)
# tiny: measured over the 300 steps of each tiny preset (default data; speech seeds 0 and 1, text and image seed 0):
# healthy target_var >= 0.35 (speech), 0.56 (text), 0.83 (image); a collapsed teacher (averaged parameters zeroed,
# tau = 1) 0.001 from step 1. pred_var cannot tell them apart early (a healthy student first predicts the mean
# target: speech dips to 0.024-0.028 near step 30, >= 0.038 after step 50, while a collapsed run's pred_var is still
# 0.017 at step 36), so its threshold is 0.005 after 50 steps; the target_var check catches the collapsed teacher.
TINY_GUARD = GuardConfig(min_target_var=0.1, min_pred_var=0.005, after_steps=50)


# ----------------------------------------------------------------------------------------- speech
def speech_base() -> Data2VecConfig:
    """fairseq examples/data2vec/config/audio/pretraining/base_librispeech.yaml (LibriSpeech 960 h)."""
    return Data2VecConfig(
        modality="speech", name="base",
        encoder=SpeechConfig(layerdrop=0.05),
        masking=MaskingConfig(kind="span", prob=0.65, length=10),
        targets=TargetConfig(top_k=8, layer_norm="instance", final_norm="none", site="ffn"),
        ema=EMAConfig(decay_start=0.999, decay_end=0.9999, anneal_steps=30_000,
                      shared=("front_end", "positional"), teacher_input="student_features"),
        loss=LossConfig(beta=0.0, scale=None, reduction="sum", head_layers=1),
        # one update = 16 GPUs x a batch of <= 3.8M samples (max_tokens) = 60.8M samples (63 min of
        # audio); batch_size counts those batches: with G GPUs, accum_steps = 16 / G. Crops of 2-20 s
        optim=OptimConfig(lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, schedule="tri_stage",
                          warmup_steps=12_000, total_steps=400_000, tri_stage_ratios=(0.03, 0.9, 0.07),
                          clip_norm=0.0, batch_size=16, max_tokens=3_800_000),
        guard=PAPER_GUARD,
        crop=320_000, min_crop=32_000,  # fairseq max/min_sample_size: 2-20 s, batches cropped to their shortest clip
    )


def speech_large() -> Data2VecConfig:
    """Libri-light LL-60K model (no released pretraining config: base recipe at large dims, base's update)."""
    c = speech_base()
    return replace(c, name="large", encoder=SpeechConfig(dim=1024, depth=24, heads=16, ffn_dim=4096, layerdrop=0.05),
                   targets=replace(c.targets, top_k=8))


def speech_small() -> Data2VecConfig:
    """The GPU profile (see the module docstring): LibriSpeech train-clean-100, 4-s crops."""
    c = speech_base()
    return replace(c, name="small", encoder=SpeechConfig(dim=512, depth=8, heads=8, ffn_dim=2048, layerdrop=0.0),
                   targets=replace(c.targets, top_k=6), crop=16_000 * 4, short_clips="chain",
                   ema=replace(c.ema, **_small_ema()),
                   # one update: 16 clips of <= 4 s (batched by clip count), at most 1.02M samples
                   optim=replace(c.optim, total_steps=SMALL_STEPS, warmup_steps=90, batch_size=16, max_tokens=0),
                   guard=SMALL_GUARD)


def speech_tiny() -> Data2VecConfig:
    c = speech_base()
    conv = ((64, 10, 5),) + ((64, 3, 2),) * 4 + ((64, 2, 2),) * 2  # same 20 ms hop, 64 channels
    enc = SpeechConfig(dim=96, depth=4, heads=4, ffn_dim=192, conv_layers=conv, conv_pos_layers=2,
                       conv_pos_kernel=9, conv_pos_groups=4, dropout=0.0, attn_dropout=0.0, layerdrop=0.0)
    return replace(c, name="tiny", encoder=enc, targets=replace(c.targets, top_k=3), crop=32_000, min_crop=32_000,
                   short_clips="chain",
                   ema=replace(c.ema, decay_start=0.99, decay_end=0.999, anneal_steps=300),
                   # lr 5e-4 (not 2e-3): at 2e-3 the 200-300-step demo run learns features that probe below a
                   # random-init encoder on FSDD digits; at 5e-4 they beat it (d2v_mini/demo.py)
                   # one update: 16 clips of <= 1 s (batched by clip count), at most 256k samples
                   optim=replace(c.optim, lr=5e-4, schedule="cosine", warmup_steps=20, total_steps=300,
                                 weight_decay=0.01, batch_size=16, clip_norm=1.0, max_tokens=0),
                   guard=TINY_GUARD)


# ------------------------------------------------------------------------------------------ image
def _epochs(epochs: float, batch: int, n: int = IMAGENET_TRAIN) -> int:
    return round(epochs * n / batch)


def image_base() -> Data2VecConfig:
    """The released data2vec-vision code (BEiT fork, README ViT-B): 800 epochs, batch 2048."""
    return Data2VecConfig(
        modality="image", name="base",
        encoder=ImageConfig(norm_first=True, layer_scale_init=1e-4, key_bias=False, layer_norm_eps=1e-6,
                            dropout=0.0, attn_dropout=0.05, activation_dropout=0.0, drop_path=0.25,
                            rel_pos_bias="shared"),
        masking=MaskingConfig(kind="block", num_patches=120, min_block=16, min_aspect=0.3),
        targets=TargetConfig(top_k=6, layer_norm="layer", final_norm="layer", site="end"),
        ema=EMAConfig(decay_start=0.9998, decay_end=0.9998, anneal_steps=0, shared=(), teacher_input="raw"),
        loss=LossConfig(beta=2.0, reduction="mean", head_layers=1),
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, schedule="cosine",
                          warmup_steps=_epochs(10, 2048), total_steps=_epochs(800, 2048), min_lr_ratio=1e-5 / 2e-3,
                          clip_norm=3.0, batch_size=2048),
        guard=PAPER_GUARD,
    )


def image_base_paper() -> Data2VecConfig:
    """The paper's description (P1 section 4.1) where it differs from the released code."""
    c = image_base()
    return replace(c, name="base_paper", encoder=replace(c.encoder, drop_path=0.2),
                   targets=replace(c.targets, site="ffn", final_norm="none"),
                   ema=replace(c.ema, shared=("front_end", "positional")),
                   optim=replace(c.optim, warmup_steps=_epochs(40, 2048)))


def image_large() -> Data2VecConfig:
    """Released ViT-L stage 1: 800 epochs, batch 64 x 64 = 4096 (paper: 8192)."""
    c = image_base()
    enc = replace(c.encoder, dim=1024, depth=24, heads=16, ffn_dim=4096, layer_scale_init=1e-5,
                  drop_path=0.2, attn_dropout=0.15)
    return replace(c, name="large", encoder=enc,
                   optim=replace(c.optim, lr=1e-3, warmup_steps=_epochs(80, 4096), total_steps=_epochs(800, 4096),
                                 min_lr_ratio=1e-5 / 1e-3, batch_size=4096))


def image_small() -> Data2VecConfig:
    """The GPU profile (see the module docstring): a ViT of width 384 on 32 x 32 images (Fashion-MNIST padded,
    CIFAR-10), 4 x 4 patches, with the tiny preset's short-run choices (absolute positions, layer scale 0.1)."""
    c = image_base()
    enc = replace(c.encoder, dim=384, depth=8, heads=6, ffn_dim=1536, image_size=32, patch_size=4,
                  layer_scale_init=0.1, drop_path=0.1, attn_dropout=0.0, abs_pos_emb=True)
    return replace(c, name="small", encoder=enc, masking=replace(c.masking, num_patches=38, min_block=4),
                   targets=replace(c.targets, top_k=4), ema=replace(c.ema, **_small_ema()), guard=SMALL_GUARD,
                   optim=replace(c.optim, lr=1.5e-3, batch_size=256, warmup_steps=200, total_steps=SMALL_STEPS,
                                 min_lr_ratio=0.01))


def image_tiny() -> Data2VecConfig:
    """32 x 32 images (CIFAR-10 / padded Fashion-MNIST), 4 x 4 patches: an 8 x 8 grid of 64 patches."""
    c = image_base()
    # abs_pos_emb: with relative positions only, mean-pooled patch features are almost translation
    # invariant, and a short pretraining cannot encode the layout (Fashion-MNIST classes differ by it)
    enc = replace(c.encoder, dim=96, depth=4, heads=4, ffn_dim=384, image_size=32, patch_size=4,
                  layer_scale_init=0.1, drop_path=0.0, attn_dropout=0.0, abs_pos_emb=True)
    return replace(c, name="tiny", encoder=enc, masking=replace(c.masking, num_patches=38, min_block=4),
                   targets=replace(c.targets, top_k=3),
                   ema=replace(c.ema, decay_start=0.99, decay_end=0.999, anneal_steps=300),
                   optim=replace(c.optim, lr=1e-3, warmup_steps=20, total_steps=300, min_lr_ratio=0.01,
                                 batch_size=64, clip_norm=3.0),
                   guard=TINY_GUARD)


# ------------------------------------------------------------------------------------------- text
def text_base() -> Data2VecConfig:
    """fairseq examples/data2vec/config/text/pretraining/base.yaml (Books + Wikipedia, RoBERTa BPE)."""
    return Data2VecConfig(
        modality="text", name="base",
        encoder=TextConfig(),
        # the released config uses the paper's span variant: 35% in spans of 4, all replaced by <mask>
        masking=MaskingConfig(kind="bert", prob=0.35, length=4, random_token_prob=0.0, leave_unmasked_prob=0.0),
        targets=TargetConfig(top_k=10, layer_norm="layer", final_norm="none", site="ffn"),
        ema=EMAConfig(decay_start=0.999, decay_end=0.9999, anneal_steps=300_000,
                      shared=("front_end", "positional"), teacher_input="raw"),
        loss=LossConfig(beta=4.0, scale=1.0, reduction="sum", head_layers=2),
        # 16 GPUs x 8192 tokens = 256 sequences of 512 tokens
        optim=OptimConfig(lr=2e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, schedule="cosine",
                          warmup_steps=10_000, total_steps=1_000_000, min_lr_ratio=0.0, clip_norm=5.0,
                          batch_size=256),
        guard=PAPER_GUARD,
        crop=512,
    )


def text_base_paper() -> Data2VecConfig:
    """The paper's text recipe: BERT masking 15% with 80/10/10, tau_n 100k, tri-stage 5/80/15."""
    c = text_base()
    return replace(c, name="base_paper",
                   masking=MaskingConfig(kind="bert", prob=0.15, length=1, random_token_prob=0.1,
                                         leave_unmasked_prob=0.1),
                   ema=replace(c.ema, anneal_steps=100_000),
                   optim=replace(c.optim, schedule="tri_stage", tri_stage_ratios=(0.05, 0.8, 0.15),
                                 tri_stage_decay="linear", warmup_steps=50_000))


def text_large() -> Data2VecConfig:
    """RoBERTa-large dims with the base recipe. Not a released model: data2vec 1.0 released only the text
    base checkpoint (facebook/data2vec-text-base), and no text-large recipe."""
    c = text_base()
    return replace(c, name="large", encoder=TextConfig(dim=1024, depth=24, heads=16, ffn_dim=4096))


def text_small() -> Data2VecConfig:
    """The GPU profile (see the module docstring): WikiText-103 in GPT-2's BPE, blocks of 256 tokens."""
    c = text_base()
    return replace(c, name="small", encoder=TextConfig(dim=512, depth=8, heads=8, ffn_dim=2048, max_positions=258),
                   targets=replace(c.targets, top_k=6), crop=256, ema=replace(c.ema, **_small_ema()), guard=SMALL_GUARD,
                   optim=replace(c.optim, lr=5e-4, batch_size=32, warmup_steps=300, total_steps=SMALL_STEPS))


def _small_ema() -> dict:
    return dict(decay_start=SMALL_EMA.decay_start, decay_end=SMALL_EMA.decay_end, anneal_steps=SMALL_EMA.anneal_steps)


def text_tiny() -> Data2VecConfig:
    """A locally trained 2,048-token byte-level BPE, 64-token blocks."""
    c = text_base()
    enc = TextConfig(dim=96, depth=4, heads=4, ffn_dim=384, vocab_size=2048, max_positions=66, mask_idx=2047,
                     dropout=0.0, attn_dropout=0.0)
    return replace(c, name="tiny", encoder=enc, targets=replace(c.targets, top_k=3), crop=64,
                   loss=replace(c.loss, head_layers=2),
                   ema=replace(c.ema, decay_start=0.99, decay_end=0.999, anneal_steps=300),
                   optim=replace(c.optim, lr=1e-3, warmup_steps=20, total_steps=300, min_lr_ratio=0.01,
                                 batch_size=32, clip_norm=1.0),
                   guard=TINY_GUARD)


PRESETS = {
    "speech": {"tiny": speech_tiny, "small": speech_small, "base": speech_base, "large": speech_large},
    "image": {"tiny": image_tiny, "small": image_small, "base": image_base, "base_paper": image_base_paper,
              "large": image_large},
    "text": {"tiny": text_tiny, "small": text_small, "base": text_base, "base_paper": text_base_paper,
             "large": text_large},
}
for _modality, _table in PRESETS_V2.items():
    PRESETS[_modality].update(_table)  # data2vec 2.0: tiny_v2 / small_v2 / base_v2 / large_v2 (presets_v2.py)

# the released data2vec 1.0 pretrained checkpoints each preset has the shape of (Hugging Face hub names)
RELEASED_CHECKPOINTS = {("speech", "base"): "facebook/data2vec-audio-base",
                        ("speech", "large"): "facebook/data2vec-audio-large",
                        ("image", "base"): "facebook/data2vec-vision-base",
                        ("image", "large"): "facebook/data2vec-vision-large",
                        ("text", "base"): "facebook/data2vec-text-base"}
# paper-scale presets without a released checkpoint, and why
NOT_RELEASED = {("text", "large"): "no data2vec 1.0 text-large was released: RoBERTa-large dims, base recipe"}
# encoder parameter counts of the released checkpoints (Hugging Face Data2Vec*Model, no pooler)
RELEASED_PARAMS = {("image", "base"): 85.7e6, ("image", "large"): 303.1e6, ("speech", "base"): 93.2e6,
                   ("speech", "large"): 313.3e6, ("text", "base"): 124.1e6}


def preset(modality: str, name: str = "tiny") -> Data2VecConfig:
    """A fresh config for `modality` in {speech, image, text} and `name` in PRESETS[modality]."""
    if modality not in PRESETS:
        raise ValueError(f"unknown modality {modality!r}: expected one of {sorted(PRESETS)}")
    if name not in PRESETS[modality]:
        raise ValueError(f"unknown preset {name!r} for {modality}: expected one of {list(PRESETS[modality])}")
    return PRESETS[modality][name]()


def preset_rows() -> list[dict]:
    """One row per preset: what `python -m d2v_mini presets` prints (and `--json` emits)."""
    import torch

    from .batching import describe_update
    from .encoder import build_encoder
    from .presets_v2 import describe_masking as describe_v2_masking

    rows = []
    for modality, names in PRESETS.items():
        for name in names:
            c = preset(modality, name)
            with torch.device("meta"):  # count parameters without allocating them
                n = build_encoder(c).num_params()
            m = c.masking
            masking = describe_v2_masking(c) if c.version == 2 else {"span": f"span p={m.prob} len={m.length}",
                       "block": f"block {m.num_patches} patches (min {m.min_block})",
                       "bert": f"bert p={m.prob} len={m.length} rand={m.random_token_prob} keep={m.leave_unmasked_prob}",
                       }[m.kind]
            rows.append({"modality": modality, "preset": name, "layers": c.encoder.depth, "dim": c.encoder.dim,
                         "heads": c.encoder.heads, "encoder_params": n, "masking": masking, "top_k": c.targets.top_k,
                         "tau": f"{c.ema.decay_start}->{c.ema.decay_end}"
                                + (f" / {c.ema.anneal_steps}" if c.ema.anneal_steps else ""),
                         "update": describe_update(c), "released": released(modality, name)})
    return rows


def released(modality: str, name: str) -> str:
    """The hub name of the released checkpoint a preset has the shape of, "not released" for a paper-scale
    preset without one (text large), "-" for d2v_mini's own scales and recipe variants (tiny, small, base_paper)."""
    if (modality, name) in RELEASED_CHECKPOINTS:
        return RELEASED_CHECKPOINTS[(modality, name)]
    return "not released" if (modality, name) in NOT_RELEASED else "-"


def format_table(rows: list[dict]) -> str:
    """A plain-text table of `preset_rows()`, and what is not released."""
    head = ["modality", "preset", "layers", "dim", "heads", "encoder_params", "masking", "top_k", "tau", "update",
            "released"]
    cells = [[f"{r[h] / 1e6:.1f}M" if h == "encoder_params" else str(r[h]) for h in head] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    notes = [f"{m} {n}: {why}" for (m, n), why in NOT_RELEASED.items()]
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(c) for c in cells] + notes)
