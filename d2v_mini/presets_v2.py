"""data2vec 2.0 presets: `base_v2` / `large_v2` are fairseq's released `examples/data2vec/config/v2/*.yaml`
(../shared/reference/data2vec-recipes.md sections 4.3-4.5, 4.7), `small_v2` (one GPU) and `tiny_v2` (CPU,
seconds per step) scale them down. Registered in presets.PRESETS next to the 1.0 presets.

Conventions: `encoder.depth` counts every block, the first `prenet_depth` are fairseq's context-encoder
("prenet") blocks; `ema.shared` is what the teacher copies instead of averaging (speech: the CNN front end,
which it never runs; text: the embeddings, `ema_encoder_only`; images: nothing, `ema_local_encoder`);
`optim.batch_size` is the yaml's GPUs x batch (speech: x `max_tokens` samples). Schedules are linear
warm-up then cosine to 0 (A7); the released optimiser is Adam with decoupled weight decay (AdamW here).
"""
from __future__ import annotations

from dataclasses import replace

from .config import Data2VecConfig, EMAConfig, GuardConfig, LossConfig, MaskingConfig, OptimConfig, TargetConfig
from .config_v2 import DecoderConfig, ImageConfig2, SpeechConfig2, TextConfig2, V2Config

GUARD = GuardConfig(min_target_var=0.1, min_pred_var=0.01, after_steps=5000)
# tiny_v2: the 1.0 tiny presets' guard (presets.TINY_GUARD), checked within the 300-step runs. The released 2.0
# vision configs set no guard; d2v_mini gives every preset one (issue 8): 2.0 vision targets end layer-normalised,
# so the same thresholds fit.
TINY_GUARD = GuardConfig(min_target_var=0.1, min_pred_var=0.005, after_steps=50)


def _v2(modality: str, name: str, encoder, v2: V2Config, targets: TargetConfig, ema: EMAConfig,
        loss: LossConfig, optim: OptimConfig, guard: GuardConfig, **kw) -> Data2VecConfig:
    # `masking` is unused by 2.0 (the `v2` section holds the masks); kept at its default for old readers
    return Data2VecConfig(modality=modality, name=name, encoder=encoder, masking=MaskingConfig(), targets=targets,
                          ema=ema, loss=loss, optim=optim, guard=guard, version=2, v2=v2, **kw)


# ----------------------------------------------------------------------------------------- speech
def speech_base_v2() -> Data2VecConfig:
    """config/v2/base_audio_only_task.yaml (LibriSpeech 960 h)."""
    return _v2(
        "speech", "base_v2",
        encoder=SpeechConfig2(dim=768, depth=12, heads=12, ffn_dim=3072, dropout=0.1, attn_dropout=0.1,
                              activation_dropout=0.0, layerdrop=0.05, conv_pos_layers=5, conv_pos_kernel=19,
                              conv_pos_groups=16, layer_norm_eps=1e-5, prenet_depth=0, alibi=True),
        v2=V2Config(clone_batch=8, mask_kind="block_1d", mask_prob=0.5, mask_length=5, mask_prob_adjust=0.05,
                    decoder=DecoderConfig(dim=384, kernel=7, layers=4, groups=16, residual=True, projection_layers=1,
                                          input_dropout=0.1)),
        targets=TargetConfig(top_k=8, layer_norm="instance", final_norm="none", site="ffn"),
        ema=EMAConfig(decay_start=0.999, decay_end=0.99999, anneal_steps=75_000, shared=("front_end",),
                      teacher_input="student_features"),
        loss=LossConfig(beta=0.0, scale=None, reduction="sum"),
        # 8 GPUs x max_tokens 1.0M samples (~8.3 min of audio per update before cloning)
        optim=OptimConfig(lr=7.5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, schedule="cosine",
                          warmup_steps=8000, total_steps=400_000, min_lr_ratio=0.0, clip_norm=0.0, batch_size=8,
                          max_tokens=1_000_000),
        guard=GUARD, crop=320_000, min_crop=32_000)


def speech_large_v2() -> Data2VecConfig:
    """config/v2/large_audio_only_task.yaml (Libri-light 60k h): prenet 8 + 16 shared blocks."""
    c = speech_base_v2()
    enc = replace(c.encoder, dim=1024, depth=24, heads=16, ffn_dim=4096, layerdrop=0.0, prenet_depth=8)
    return replace(c, name="large_v2", encoder=enc,
                   v2=replace(c.v2, clone_batch=12, mask_prob=0.55, mask_prob_adjust=0.1,
                              decoder=replace(c.v2.decoder, dim=768)),
                   targets=replace(c.targets, top_k=16),
                   ema=replace(c.ema, decay_start=0.9997, decay_end=1.0, anneal_steps=300_000),
                   optim=replace(c.optim, lr=4e-4, warmup_steps=10_000, total_steps=600_000, clip_norm=1.0,
                                 batch_size=48, max_tokens=320_000))


def speech_small_v2() -> Data2VecConfig:
    c = speech_base_v2()
    enc = replace(c.encoder, dim=512, depth=8, heads=8, ffn_dim=2048, layerdrop=0.0)
    return replace(c, name="small_v2", encoder=enc, v2=replace(c.v2, decoder=replace(c.v2.decoder, dim=256)),
                   targets=replace(c.targets, top_k=6), crop=16_000 * 5, short_clips="chain",
                   optim=replace(c.optim, total_steps=50_000, warmup_steps=1500, batch_size=32, max_tokens=0))


def speech_tiny_v2() -> Data2VecConfig:
    c = speech_base_v2()
    conv = ((64, 10, 5),) + ((64, 3, 2),) * 4 + ((64, 2, 2),) * 2
    enc = replace(c.encoder, dim=96, depth=4, heads=4, ffn_dim=192, conv_layers=conv, conv_pos_layers=2,
                  conv_pos_kernel=9, conv_pos_groups=4, dropout=0.0, attn_dropout=0.0, layerdrop=0.0)
    return replace(c, name="tiny_v2", encoder=enc,
                   v2=replace(c.v2, clone_batch=4, decoder=replace(c.v2.decoder, dim=64, groups=4, layers=2,
                                                                    input_dropout=0.0)),
                   targets=replace(c.targets, top_k=3), crop=32_000, min_crop=32_000, short_clips="chain",
                   # the teacher runs its own EMA CNN on the waveform (fairseq `ema_local_encoder: true`, the
                   # released vision setting): with the released sharing (it reads the student's CNN features)
                   # the tiny probe peaks at 67 steps and falls to the random-init level by 200 (0.333 vs 0.331,
                   # seed 0); with its own CNN it ends at 0.410 / 0.417 (seeds 0, 1; demo.py SPECS_V2)
                   ema=replace(c.ema, decay_start=0.99, decay_end=0.999, anneal_steps=300, shared=(),
                               teacher_input="raw"),
                   # 8 clips x 4 clones: about the cost of a 1.0 tiny step (16 clips); lr 1e-3 probes worse (demo.py)
                   optim=replace(c.optim, lr=5e-4, warmup_steps=20, total_steps=300, batch_size=8, clip_norm=1.0,
                                 max_tokens=0),
                   guard=TINY_GUARD)


# ------------------------------------------------------------------------------------------ image
def image_base_v2() -> Data2VecConfig:
    """config/v2/base_images_only_task.yaml (ImageNet-1k, ViT-B/16): prenet 2 + 10 shared blocks."""
    return _v2(
        "image", "base_v2",
        encoder=ImageConfig2(dim=768, depth=12, heads=12, ffn_dim=3072, image_size=224, patch_size=16,
                             layer_norm_eps=1e-6, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0,
                             drop_path=0.0, prenet_depth=2),
        v2=V2Config(clone_batch=16, mask_kind="inverse_block_2d", mask_prob=0.8, mask_length=3, mask_prob_adjust=0.07,
                    cls_loss=0.01,
                    decoder=DecoderConfig(dim=768, kernel=3, layers=6, groups=16, residual=True, projection_layers=1,
                                          input_dropout=0.0, conv2d=True)),
        targets=TargetConfig(top_k=10, layer_norm="instance", final_norm="layer", site="ffn"),
        ema=EMAConfig(decay_start=0.9998, decay_end=0.99999, anneal_steps=100_000, shared=(), teacher_input="raw"),
        loss=LossConfig(beta=0.0, scale=None, reduction="sum"),
        # 16 GPUs x 16 images
        optim=OptimConfig(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, schedule="cosine",
                          warmup_steps=50_040, total_steps=375_300, min_lr_ratio=0.0, clip_norm=4.0, batch_size=256),
        guard=GUARD)


def image_large_v2() -> Data2VecConfig:
    """config/v2/large_images_only_task.yaml (ViT-L/16): 24 blocks, no prenet."""
    c = image_base_v2()
    enc = replace(c.encoder, dim=1024, depth=24, heads=16, ffn_dim=4096, prenet_depth=0)
    return replace(c, name="large_v2", encoder=enc,
                   v2=replace(c.v2, mask_prob=0.75, mask_prob_adjust=0.1,
                              decoder=replace(c.v2.decoder, dim=1024, kernel=5, layers=3)),
                   targets=replace(c.targets, top_k=18),
                   ema=replace(c.ema, anneal_steps=150_000),
                   optim=replace(c.optim, lr=4e-4, batch_size=128))  # 16 GPUs x 8 images


def image_small_v2() -> Data2VecConfig:
    c = image_base_v2()
    enc = replace(c.encoder, dim=384, depth=12, heads=6, ffn_dim=1536, prenet_depth=2)
    return replace(c, name="small_v2", encoder=enc, v2=replace(c.v2, decoder=replace(c.v2.decoder, dim=384)),
                   optim=replace(c.optim, lr=1.5e-3, batch_size=256, warmup_steps=3900, total_steps=78_000))


def image_tiny_v2() -> Data2VecConfig:
    """32 x 32 images, 4 x 4 patches (an 8 x 8 grid): 1 prenet + 3 shared blocks."""
    c = image_base_v2()
    enc = replace(c.encoder, dim=96, depth=4, heads=4, ffn_dim=384, image_size=32, patch_size=4, prenet_depth=1)
    return replace(c, name="tiny_v2", encoder=enc,
                   # cls_loss 0: the released CLS term is summed over the clones of a batch (fairseq multiplies it by
                   # sample_size), so at 32 x 8 clones it dominates a tiny model's loss; the demo probe (Fashion-MNIST,
                   # 300 steps, measured before images got 2.0's own init) gave 0.757 with 0.01 and 0.789 without
                   v2=replace(c.v2, clone_batch=8, cls_loss=0.0,
                              decoder=replace(c.v2.decoder, dim=96, groups=4, layers=3)),
                   targets=replace(c.targets, top_k=3),
                   ema=replace(c.ema, decay_start=0.99, decay_end=0.999, anneal_steps=300),
                   optim=replace(c.optim, lr=1e-3, warmup_steps=20, total_steps=300, batch_size=32, clip_norm=4.0),
                   guard=TINY_GUARD)


# ------------------------------------------------------------------------------------------- text
def text_base_v2() -> Data2VecConfig:
    """config/v2/base_text_only_task.yaml (Books + Wikipedia, RoBERTa BPE, 512-token blocks)."""
    return _v2(
        "text", "base_v2",
        encoder=TextConfig2(dim=768, depth=12, heads=12, ffn_dim=3072, dropout=0.1, attn_dropout=0.1, layerdrop=0.0),
        v2=V2Config(clone_batch=8, mask_kind="random", mask_prob=0.48, mask_length=1, mask_prob_adjust=0.0,
                    decoder=DecoderConfig(dim=768, kernel=9, layers=5, groups=1, residual=False, projection_layers=2,
                                          input_dropout=0.1)),
        targets=TargetConfig(top_k=12, layer_norm="instance", final_norm="none", site="ffn"),
        ema=EMAConfig(decay_start=0.9999, decay_end=0.99999, anneal_steps=100_000, shared=("front_end", "positional"),
                      teacher_input="student_features"),
        loss=LossConfig(beta=0.0, scale=1.0, reduction="sum"),
        # 16 GPUs x 4 sequences of 512 tokens
        optim=OptimConfig(lr=2e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, schedule="cosine",
                          warmup_steps=4000, total_steps=1_000_000, min_lr_ratio=0.0, clip_norm=1.0, batch_size=64),
        guard=GUARD, crop=512)


def text_large_v2() -> Data2VecConfig:
    """config/v2/large_text_only_task.yaml: per-layer LN targets with a final IN; decoder width stays 768."""
    c = text_base_v2()
    return replace(c, name="large_v2", encoder=replace(c.encoder, dim=1024, depth=24, heads=16, ffn_dim=4096),
                   v2=replace(c.v2, mask_prob=0.5),
                   targets=TargetConfig(top_k=24, layer_norm="layer", final_norm="instance", site="ffn"),
                   optim=replace(c.optim, lr=1e-4, total_steps=600_000, batch_size=64))  # 32 GPUs x 2


def text_small_v2() -> Data2VecConfig:
    c = text_base_v2()
    enc = replace(c.encoder, dim=512, depth=8, heads=8, ffn_dim=2048, max_positions=258)
    return replace(c, name="small_v2", encoder=enc, v2=replace(c.v2, decoder=replace(c.v2.decoder, dim=512)),
                   targets=replace(c.targets, top_k=8), crop=256,
                   optim=replace(c.optim, lr=5e-4, batch_size=64, warmup_steps=2000, total_steps=100_000))


def text_tiny_v2() -> Data2VecConfig:
    """The tiny 2,048-token byte-level BPE and 64-token blocks of the 1.0 tiny preset."""
    c = text_base_v2()
    # ALiBi instead of learned absolute positions (fairseq D2vTextConfig no_token_positional_embeddings +
    # use_alibi_encoder, learned per-head scale): with the released learned positions the teacher's targets
    # become position tables at this size (position alone explains 94% of their variance after 150 steps, 49%
    # at init) and the probe falls below random init (0.693 / 0.676, seeds 0 / 1); with ALiBi position explains
    # 5% and token identity 98% (benchmarks/bench_text_targets.py; demo.py SPECS_V2 has the probe numbers)
    enc = replace(c.encoder, dim=96, depth=4, heads=4, ffn_dim=384, vocab_size=2048, max_positions=66, mask_idx=2047,
                  dropout=0.0, attn_dropout=0.0, positions="none", alibi=True)
    return replace(c, name="tiny_v2", encoder=enc, crop=64,
                   v2=replace(c.v2, clone_batch=4,
                              decoder=replace(c.v2.decoder, dim=64, kernel=5, layers=2, input_dropout=0.0)),
                   # per-layer LN targets (1.0 text's norm; released text-large's before its final IN): a sample
                   # is one sentence here (41 tokens on average) and text-base's IN over time rescales every channel
                   # per sentence (each channel's sentence mean becomes 0). With ALiBi: IN 0.719 / 0.694 (seeds
                   # 0 / 1; a random-init encoder 0.712), LN 0.737 / 0.729, LN then text-large's final IN 0.714
                   # (seed 0); the student predicts LN targets better (R^2 0.24 vs 0.16, bench_text_targets.py)
                   targets=replace(c.targets, top_k=3, layer_norm="layer"),
                   ema=replace(c.ema, decay_start=0.99, decay_end=0.999, anneal_steps=300),
                   optim=replace(c.optim, lr=1e-3, warmup_steps=20, total_steps=300, batch_size=32),
                   guard=TINY_GUARD)


PRESETS_V2 = {
    "speech": {"tiny_v2": speech_tiny_v2, "small_v2": speech_small_v2, "base_v2": speech_base_v2,
               "large_v2": speech_large_v2},
    "image": {"tiny_v2": image_tiny_v2, "small_v2": image_small_v2, "base_v2": image_base_v2,
              "large_v2": image_large_v2},
    "text": {"tiny_v2": text_tiny_v2, "small_v2": text_small_v2, "base_v2": text_base_v2, "large_v2": text_large_v2},
}


def describe_masking(cfg: Data2VecConfig) -> str:
    """The masking column of `d2v_mini presets` for a 2.0 config."""
    v = cfg.v2
    kind = {"block_1d": "blocks", "inverse_block_2d": "inverse blocks", "random": "random"}[v.mask_kind]
    length = f" len={v.mask_length}" if v.mask_kind != "random" else ""
    return f"v2 {kind} p={v.mask_prob}{length} x M={v.clone_batch}"
