"""Back-of-the-envelope costs of a preset: FLOPs per sample, training memory, batch planning (notebook 06).

    f = flops_per_sample(preset("image", "base"))          # dict: tokens, macs per part, train FLOPs per sample
    m = memory_estimate(preset("speech", "base"), batch_size=4)   # dict of bytes: model states, activations
    b = max_micro_batch(cfg, gpu_gib=80)                   # largest per-GPU micro-batch that fits the estimate
    accum, micro = plan_batch(paper_batch(cfg)[0], max_micro=b, world=8)

Counting rules (all documented, none measured):
  * MACs of the matmuls and convolutions only (norms, softmax, GELU are ignored); FLOPs = 2 x MACs.
    A ViT-B/16 at 224 px comes out at 17.6 GMACs, the number usually quoted as "17.6 GFLOPs".
  * Per block, T tokens, width D, FFN width F: 4 T D^2 (q, k, v, out) + 2 T^2 D (scores, values) + 2 T D F.
  * One training step per sample = student forward + backward (3 x forward) + teacher forward
    (speech: the teacher reuses the student's CNN features, `EMAConfig.teacher_input`), plus the
    regression head on the masked positions (3 x). data2vec 2.0: the front end and the teacher run once
    per sample, the M clones run the blocks on their visible tokens and the conv decoder (the "head") on
    every position.
  * Activations: what autograd saves for the backward pass, counted tensor by tensor for d2v_mini's
    blocks under bf16 autocast (the method of Korthikanti et al. 2022, "Reducing activation
    recomputation"), with attention through `scaled_dot_product_attention` (flash / memory-efficient:
    no T x T matrix is kept); see `activation_bytes_per_sample`. The teacher's layer outputs are alive
    until the targets are built. Model states: fp32 weights, gradients, AdamW moments and the fp32
    teacher, 20 bytes per parameter. Real peaks add the CUDA context, allocator slack, workspace and
    fragmentation (~1-3 GiB or more): treat the results as lower bounds on memory.
"""
from __future__ import annotations

import math

import torch

from .config import Data2VecConfig, ImageConfig, SpeechConfig
from .decoder import Decoder
from .encoder import build_encoder

GIB = 1024 ** 3
SPEECH_CROPS_PER_UPDATE = 192  # 16 GPUs x 3.8M samples = 60.8M samples (63 min) ~ 190 crops of 20 s; 16 x 12


def paper_batch(cfg: Data2VecConfig) -> tuple[int, str]:
    """The samples of one optimizer step of the recipe, and a description.

    Images and text: cfg.optim.batch_size (2048 / 4096 images, 256 blocks of 512 tokens). Speech batches
    are counted in audio samples (16 GPUs x 3.8M = 60.8M samples, 63 minutes: `batching.describe_update`); the
    FLOP and memory arithmetic counts it as 192 crops of 20 s (61.4M samples; = 16 x 12, so that it divides over
    GPUs), the longest crop the recipe takes. The description says both."""
    if cfg.modality == "speech":
        return SPEECH_CROPS_PER_UPDATE, f"16 x 3.8M samples ~ {SPEECH_CROPS_PER_UPDATE} crops of 20 s"
    b = cfg.optim.batch_size
    if cfg.modality == "image":
        return b, f"{b} images of {cfg.encoder.image_size} px"
    return b, f"{b} blocks of {cfg.crop or 512} tokens"


def input_tokens(cfg: Data2VecConfig, input_size: int | None = None) -> int:
    """Positions the Transformer sees for one sample. input_size: speech samples (default cfg.crop),
    image side in pixels (default cfg.encoder.image_size), text tokens (default cfg.crop)."""
    enc = cfg.encoder
    if isinstance(enc, SpeechConfig):
        n = input_size or cfg.crop or 15 * enc.sample_rate
        for _, k, s in enc.conv_layers:
            n = (n - k) // s + 1
        return n
    if isinstance(enc, ImageConfig):
        side = input_size or enc.image_size
        return (side // enc.patch_size) ** 2 + 1  # + CLS
    return input_size or cfg.crop or 512


def masked_fraction(cfg: Data2VecConfig) -> float:
    """The expected fraction of positions in the loss (speech 1 - (1 - p/len)^len ~ 0.49; images
    num_patches / patches; text prob x (1 - random - keep), the `<mask>`-replaced tokens)."""
    if cfg.version == 2:
        return cfg.v2.mask_prob  # 2.0 masks exactly int(prob x T) per row (images: of the patches)
    m, enc = cfg.masking, cfg.encoder
    if m.kind == "span":
        return 1 - (1 - m.prob / m.length) ** m.length
    if m.kind == "block":
        return m.num_patches / (enc.image_size // enc.patch_size) ** 2
    return m.prob * (1 - m.random_token_prob - m.leave_unmasked_prob)


def _front_end_macs(cfg: Data2VecConfig, input_size: int | None) -> tuple[int, int]:
    """(MACs of the feature extractor, MACs of the positional encoder) for one sample."""
    enc = cfg.encoder
    if isinstance(enc, SpeechConfig):
        n, c_in, conv = input_size or cfg.crop or 15 * enc.sample_rate, 1, 0
        for c, k, s in enc.conv_layers:
            n = (n - k) // s + 1
            conv += n * c * c_in * k
            c_in = c
        proj = n * c_in * enc.dim
        pos = enc.conv_pos_layers * n * enc.dim * (enc.dim // enc.conv_pos_groups) * enc.conv_pos_kernel
        return conv + proj, pos
    if isinstance(enc, ImageConfig):
        side = input_size or enc.image_size
        patches = (side // enc.patch_size) ** 2
        return patches * enc.dim * enc.in_chans * enc.patch_size ** 2, 0
    return 0, 0  # text: embedding lookups


def block_macs(tokens: int, dim: int, ffn_dim: int) -> int:
    """MACs of one Transformer block on `tokens` positions: 4 T D^2 + 2 T^2 D + 2 T D F."""
    return 4 * tokens * dim ** 2 + 2 * tokens ** 2 * dim + 2 * tokens * dim * ffn_dim


def flops_per_sample(cfg: Data2VecConfig, input_size: int | None = None) -> dict[str, float]:
    """Forward MACs by part and the training FLOPs of one sample (see the module docstring).

    Returns dict(tokens, front_end, positional, blocks, head (MACs), forward_flops (student forward),
    teacher_flops, train_flops (= 3 x student forward + 3 x head + teacher forward, in FLOPs))."""
    enc = cfg.encoder
    t = input_tokens(cfg, input_size)
    front, pos = _front_end_macs(cfg, input_size)
    if cfg.version == 2:
        return _flops_v2(cfg, t, front, pos)
    blocks = enc.depth * block_macs(t, enc.dim, enc.ffn_dim)
    positions = (t - 1 if isinstance(enc, ImageConfig) else t) * masked_fraction(cfg)
    head = positions * enc.dim ** 2 * (1 if cfg.loss.head_layers == 1 else 4)
    student = front + pos + blocks
    teacher = pos + blocks if (isinstance(enc, SpeechConfig) and cfg.ema.teacher_input == "student_features") \
        else student
    return {"tokens": t, "front_end": front, "positional": pos, "blocks": blocks, "head": head,
            "forward_flops": 2 * student, "teacher_flops": 2 * teacher,
            "train_flops": 2 * (3 * (student + head) + teacher)}


def visible_tokens(cfg: Data2VecConfig, tokens: int) -> int:
    """2.0: the tokens each clone's student encodes (the unmasked ones; + CLS for images)."""
    cls = 1 if isinstance(cfg.encoder, ImageConfig) else 0
    n = tokens - cls
    return n - int(n * cfg.v2.mask_prob) + cls


def _decoder_macs(cfg: Data2VecConfig, positions: int) -> int:
    """2.0 decoder MACs over `positions` slots of one clone: the convs (k or k x k taps, grouped) + projection."""
    d, c = cfg.encoder.dim, cfg.v2.decoder
    taps = c.kernel ** 2 if c.conv2d else c.kernel
    convs = sum((d if i == 0 else c.dim) * c.dim * taps // c.groups for i in range(c.layers))
    proj = c.dim * d if c.projection_layers == 1 else c.dim * 2 * c.dim + 2 * c.dim * d
    return positions * (convs + proj)


def _flops_v2(cfg: Data2VecConfig, t: int, front: int, pos: int) -> dict[str, float]:
    """data2vec 2.0: the front end runs once, M clones run positions + blocks on their visible tokens and the
    decoder on every position, the teacher runs once on all t tokens (speech / text: on the student's
    features; images: its own patch embedding)."""
    enc, m = cfg.encoder, cfg.v2.clone_batch
    slots = t - 1 if isinstance(enc, ImageConfig) else t
    blocks = m * enc.depth * block_macs(visible_tokens(cfg, t), enc.dim, enc.ffn_dim)
    head = m * _decoder_macs(cfg, slots)
    student = front + m * pos + blocks
    teacher = pos + enc.depth * block_macs(t, enc.dim, enc.ffn_dim) + (front if cfg.ema.teacher_input == "raw" else 0)
    return {"tokens": t, "front_end": front, "positional": m * pos, "blocks": blocks, "head": head,
            "forward_flops": 2 * student, "teacher_flops": 2 * teacher,
            "train_flops": 2 * (3 * (student + head) + teacher)}


def _num_params(cfg: Data2VecConfig) -> tuple[int, int]:
    """(encoder parameters, regression head parameters), counted on the meta device (no memory)."""
    d = cfg.encoder.dim
    with torch.device("meta"):
        encoder = build_encoder(cfg)
        if cfg.version == 2:  # the decoder is 2.0's head
            decoder = Decoder(d, cfg.v2.decoder, getattr(encoder, "grid", None))
            return encoder.num_params(), sum(p.numel() for p in decoder.parameters())
    n = encoder.num_params()
    head = d * d + d if cfg.loss.head_layers == 1 else (d * 2 * d + 2 * d) + (2 * d * d + d)
    return n, head


def activation_bytes_per_sample(cfg: Data2VecConfig, input_size: int | None = None, value_bytes: int = 2,
                                flash: bool = True) -> dict:
    """Bytes one sample keeps alive during a training step (see the module docstring).

    value_bytes: 2 = bf16 / fp16 autocast, 4 = fp32. Under autocast, layer norms and softmax run in fp32
    and every Linear saves its own 16-bit copy of an fp32 input. Per block and token (D width, F FFN):
      autocast: 26 D + 4 F bytes (q/k/v inputs 3 x 2D, q/k/v 6D, attention output and its copy 4D,
                two fp32 layer-norm inputs 8D, FFN input 2D, GELU input and output 4F),
      fp32:     4 x (9 D + 2 F) bytes (each tensor saved once),
    + 2 D one-byte dropout masks when dropout > 0, + 4 D with layer scale (its inputs).
    flash=False: attention that stores its H x T x T scores, fp32 softmax and 16-bit copy (eager, as in
    fairseq / BEiT): + 8 H T^2 bytes per block (+ 3 H T^2 with attention dropout).
    Speech CNN: ~10 bytes per channel and frame of every conv layer (16-bit conv input, fp32 layer-norm
    and GELU inputs). Teacher: its L + 1 hidden states (fp32 after a layer norm), L layer results and
    the K fp32 normalised target layers, alive while the student's activations are.
    data2vec 2.0 (cfg.version 2): the blocks hold M clones of the visible tokens each, plus the decoder's
    per-layer tensors at every position of every clone; the front end and the teacher run once.
    Returns dict(blocks, front_end, teacher, total) in bytes."""
    enc = cfg.encoder
    t = input_tokens(cfg, input_size)
    d, f = enc.dim, enc.ffn_dim
    per_token = 26 * d + 4 * f if value_bytes < 4 else 4 * (9 * d + 2 * f)
    per_token += 2 * d if max(enc.dropout, enc.attn_dropout, enc.activation_dropout) > 0 else 0
    per_token += 2 * d * value_bytes if enc.layer_scale_init > 0 else 0
    v2 = cfg.version == 2
    m, tv = (cfg.v2.clone_batch, visible_tokens(cfg, t)) if v2 else (1, t)  # 2.0: M clones of the visible tokens
    blocks = enc.depth * m * tv * per_token
    if not flash:
        blocks += enc.depth * enc.heads * m * tv * tv * (8 + (3 if enc.attn_dropout > 0 else 0))
    if v2:  # decoder: per layer conv output, fp32 LN input and GELU input/output; noise-filled input; projection
        c = cfg.v2.decoder
        blocks += m * t * (c.layers * c.dim * (value_bytes + 12) + d * (value_bytes + 4)
                           + (2 * c.dim * 6 if c.projection_layers == 2 else 0))
    if isinstance(enc, SpeechConfig):
        n, front = input_size or cfg.crop or 15 * enc.sample_rate, 0
        for c, k, s in enc.conv_layers:
            n = (n - k) // s + 1
            front += (10 if value_bytes < 4 else 12) * c * n
        front += (10 * enc.conv_pos_layers * m + 10) * t * d  # positional convs (per clone), feature norm / proj.
    else:
        front = 10 * t * d  # embeddings / patches and their layer norm
    teacher = t * d * ((enc.depth + 1) * 4 + enc.depth * value_bytes + cfg.targets.top_k * 4)
    return {"blocks": blocks, "front_end": front, "teacher": teacher, "total": blocks + front + teacher}


def memory_estimate(cfg: Data2VecConfig, batch_size: int, input_size: int | None = None,
                    value_bytes: int = 2, flash: bool = True) -> dict[str, float]:
    """Estimated training memory of one GPU for a micro-batch of `batch_size` samples, in bytes:
    dict(params (encoder + head), model_states (20 bytes / parameter), activations, total)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    enc_params, head_params = _num_params(cfg)
    states = 20 * (enc_params + head_params)
    act = batch_size * activation_bytes_per_sample(cfg, input_size, value_bytes, flash)["total"]
    return {"params": enc_params + head_params, "model_states": states, "activations": act, "total": states + act}


def max_micro_batch(cfg: Data2VecConfig, gpu_gib: float, input_size: int | None = None, reserve_gib: float = 2.0,
                    value_bytes: int = 2, flash: bool = True) -> int:
    """The largest micro-batch whose `memory_estimate` fits in `gpu_gib` GiB minus `reserve_gib`
    (CUDA context, allocator slack). 0 if not even the model states fit."""
    budget = (gpu_gib - reserve_gib) * GIB
    fixed = memory_estimate(cfg, 1, input_size, value_bytes, flash)
    per_sample = fixed["activations"]
    return max(0, int((budget - fixed["model_states"]) // per_sample))


def plan_batch(global_batch: int, max_micro: int, world: int = 1) -> tuple[int, int]:
    """Gradient accumulation to reach `global_batch` samples per optimizer step on `world` GPUs that
    fit at most `max_micro` samples each: the smallest accum_steps with global_batch divisible by
    world x accum_steps and a micro-batch <= max_micro. Returns (accum_steps, micro_batch).
    (The trainer needs cfg.optim.batch_size = global_batch divisible by world x accum_steps.)"""
    if global_batch < 1 or world < 1:
        raise ValueError(f"need global_batch >= 1 and world >= 1, got {global_batch}, {world}")
    if max_micro < 1:
        raise ValueError("max_micro < 1: not even one sample fits; use a smaller model, shorter inputs or "
                         "activation checkpointing")
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by the {world} GPUs")
    per_gpu = global_batch // world
    for accum in range(math.ceil(per_gpu / max_micro), per_gpu + 1):
        if per_gpu % accum == 0:
            return accum, per_gpu // accum
    return per_gpu, 1


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; up to TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
