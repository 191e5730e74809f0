"""(a) Our encoder against the Hugging Face Data2Vec encoder of the same config: forward + backward.

For each modality and preset, both encoders get the same input and the same mask (speech: frames
replaced by the mask embedding, images: patches replaced by the mask token, text: tokens replaced by
`<mask>` before embedding), run in training mode, and back-propagate `last_hidden_state.sum()`.
The two are timed alternately (ours, HF, ours, HF, ...) so that a change in machine load hits both;
the table gives the medians in ms and the ratio ours / HF (< 1: ours is faster), and the same for
the fastest run of each (`min_ratio`, the less load-sensitive estimate on a shared machine).

The HF configs are built here from our presets (weights are random: timing does not depend on them):
  speech -> Data2VecAudioConfig   (num_conv_pos_embeddings = our conv_pos_layers: a LAYER COUNT)
  image  -> Data2VecVisionConfig  (shared relative position bias, layer scale, no mean pooling)
  text   -> Data2VecTextConfig    (type_vocab_size 1, pad 1, positions offset like RoBERTa)
Layer drop is set to 0 on both sides (it makes the work per step random); dropout is the preset's.
`hf_extra_params` checks the equivalence: 0 for speech and images, D for text (HF's one-row
token-type embedding, which RoBERTa-style data2vec text does not have).

    python benchmarks/bench_vs_hf.py                                   # tiny, CPU or GPU
    python benchmarks/bench_vs_hf.py --presets base --batch 2 --seconds 2 --tokens 128 --repeats 3
    python benchmarks/bench_vs_hf.py --presets tiny,base --device cuda --precision bf16
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch
from torch import Tensor, nn

import common
from d2v_mini.config import Data2VecConfig, ImageConfig, SpeechConfig, TextConfig
from d2v_mini.data2vec import Data2Vec


# ------------------------------------------------------------------------------ equivalent configs
def hf_speech(enc: SpeechConfig, attn: str) -> nn.Module:
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    c = Data2VecAudioConfig(
        hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads, intermediate_size=enc.ffn_dim,
        conv_dim=[c for c, _, _ in enc.conv_layers], conv_kernel=[k for _, k, _ in enc.conv_layers],
        conv_stride=[s for _, _, s in enc.conv_layers], conv_bias=enc.conv_bias,
        num_conv_pos_embeddings=enc.conv_pos_layers, conv_pos_kernel_size=enc.conv_pos_kernel,
        num_conv_pos_embedding_groups=enc.conv_pos_groups, layer_norm_eps=enc.layer_norm_eps,
        hidden_dropout=enc.dropout, attention_dropout=enc.attn_dropout, activation_dropout=enc.activation_dropout,
        feat_proj_dropout=enc.dropout_input, layerdrop=0.0,
        mask_time_prob=0.05,  # only so that HF builds `masked_spec_embed`; the mask itself is passed in
        attn_implementation=attn)
    return Data2VecAudioModel(c)


def hf_image(enc: ImageConfig, attn: str) -> nn.Module:
    from transformers import Data2VecVisionConfig, Data2VecVisionModel

    c = Data2VecVisionConfig(
        hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads, intermediate_size=enc.ffn_dim,
        hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=enc.attn_dropout,
        layer_norm_eps=enc.layer_norm_eps,
        image_size=enc.image_size, patch_size=enc.patch_size, num_channels=enc.in_chans, use_mask_token=True,
        use_absolute_position_embeddings=enc.abs_pos_emb, use_relative_position_bias=enc.rel_pos_bias == "per_layer",
        use_shared_relative_position_bias=enc.rel_pos_bias == "shared", layer_scale_init_value=enc.layer_scale_init,
        drop_path_rate=enc.drop_path, use_mean_pooling=False, attn_implementation=attn)
    return Data2VecVisionModel(c, add_pooling_layer=False)


def hf_text(enc: TextConfig, attn: str) -> nn.Module:
    from transformers import Data2VecTextConfig, Data2VecTextModel

    c = Data2VecTextConfig(
        vocab_size=enc.vocab_size, hidden_size=enc.dim, num_hidden_layers=enc.depth, num_attention_heads=enc.heads,
        intermediate_size=enc.ffn_dim, hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=enc.attn_dropout,
        max_position_embeddings=enc.max_positions, type_vocab_size=1, pad_token_id=enc.pad_idx,
        bos_token_id=enc.bos_idx, eos_token_id=enc.eos_idx, layer_norm_eps=enc.layer_norm_eps, attn_implementation=attn)
    return Data2VecTextModel(c, add_pooling_layer=False)


HF_BUILDERS = {"speech": hf_speech, "image": hf_image, "text": hf_text}


def build_pair(cfg: Data2VecConfig, attn: str = "sdpa") -> tuple[Data2Vec, nn.Module]:
    """Our Data2Vec (its `student` is the encoder under test, `make_mask` draws the recipe's mask) and
    the HF encoder of the same shape. Layer drop is 0 on both."""
    cfg = replace(cfg, encoder=replace(cfg.encoder, layerdrop=0.0))
    return Data2Vec(cfg), HF_BUILDERS[cfg.modality](cfg.encoder, attn)


def fwd_bwd_fns(model: Data2Vec, hf: nn.Module, source: Tensor, generator: torch.Generator, precision: str = "fp32"):
    """Two closures that each run one forward + backward of `last_hidden_state.sum()` on the same
    (masked) input: ours (model.student) and HF's. Returns (ours_fn, hf_fn, masked_fraction)."""
    enc, modality = model.student, model.cfg.modality
    drawn = model.make_mask(source, None, generator)
    if modality == "text":
        tokens = drawn.tokens  # <mask> already in place: both encoders embed the corrupted tokens
        ours = lambda: enc(tokens).last_hidden_state  # noqa: E731
        theirs = lambda: hf(input_ids=tokens).last_hidden_state  # noqa: E731
        frac = drawn.replaced.float().mean().item()
    else:
        mask = drawn
        key = "mask_time_indices" if modality == "speech" else "bool_masked_pos"
        inp = "input_values" if modality == "speech" else "pixel_values"
        ours = lambda: enc(source, mask).last_hidden_state  # noqa: E731
        theirs = lambda: hf(**{inp: source, key: mask}).last_hidden_state  # noqa: E731
        frac = mask.float().mean().item()

    def step(module: nn.Module, forward):
        def run():
            module.zero_grad(set_to_none=True)
            with common.autocast(source.device, precision):
                y = forward()
            y.float().sum().backward()
            return y.shape
        return run

    return step(enc, ours), step(hf, theirs), frac


def time_alternating(fns: list, device: torch.device, warmup: int, repeats: int) -> list[list[float]]:
    """Warm each closure up, then time them in turn `repeats` times. Returns ms per closure."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            common.sync(device)
            t0 = time.perf_counter()
            fn()
            common.sync(device)
            times[i].append(1e3 * (time.perf_counter() - t0))
    return times


def bench_one(cfg: Data2VecConfig, batch: int, device: torch.device, args) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    model, hf = build_pair(cfg, args.hf_attn)
    model.to(device).train()
    hf.to(device).train()
    source = common.make_batch(cfg, batch, device, seconds=args.seconds, tokens=args.tokens, generator=g)
    ours_fn, hf_fn, frac = fwd_bwd_fns(model, hf, source, g, args.precision)
    shape_ours, shape_hf = ours_fn(), hf_fn()
    if tuple(shape_ours) != tuple(shape_hf):
        raise RuntimeError(f"{cfg.modality}: our output {tuple(shape_ours)} and HF's {tuple(shape_hf)} differ: "
                           "the two configs are not equivalent")
    t_ours, t_hf = time_alternating([ours_fn, hf_fn], device, args.warmup, args.repeats)
    m_ours, m_hf = statistics.median(t_ours), statistics.median(t_hf)
    p_ours, p_hf = model.student.num_params(), sum(p.numel() for p in hf.parameters())
    return {"modality": cfg.modality, "preset": cfg.name, "batch": batch,
            "input": "x".join(str(s) for s in source.shape[1:]), "seq": int(shape_ours[1]), "masked": frac,
            "ours_ms": m_ours, "hf_ms": m_hf, "ratio": m_ours / m_hf,
            "ours_min_ms": min(t_ours), "hf_min_ms": min(t_hf), "min_ratio": min(t_ours) / min(t_hf),
            "params_M": p_ours / 1e6, "hf_params_M": p_hf / 1e6, "hf_extra_params": p_hf - p_ours,
            "hf_attn": hf.config._attn_implementation}


COLUMNS = ["modality", "preset", "batch", "input", "seq", "ours_ms", "hf_ms", "ratio", "ours_min_ms", "hf_min_ms",
           "min_ratio", "params_M", "hf_extra_params", "hf_attn"]


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", default="8", help="comma-separated batch sizes")
    p.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="HF attention implementation")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.batch, args.warmup, args.repeats = "tiny", "2", 1, 2
    device = common.setup(args)
    import transformers

    h = common.header("ours vs Hugging Face Data2Vec*Model: forward + backward of last_hidden_state.sum()",
                      args, device, {"transformers": transformers.__version__, "hf_attn": args.hf_attn,
                                     "ratio": "ours_ms / hf_ms (median over repeats; < 1 = ours faster)"})
    common.print_header(h)
    rows = common.run_grid(args, device, bench_one, lambda r: f"ratio {r['ratio']:.2f}")
    print()
    print(common.format_table(rows, COLUMNS))
    common.write_json(args.json, h, rows)
    return rows


if __name__ == "__main__":
    main()
