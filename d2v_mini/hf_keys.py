"""Configs and parameter names shared by d2v_mini encoders and Hugging Face `Data2Vec*Model` (data2vec 1.0).

Used by `d2v_mini.hf`; see that module for the public API. Layouts (transformers 4.40 - 5.x):
../shared/reference/data2vec-recipes.md section 6.

    config_from_hf(hf_config) -> SpeechConfig | ImageConfig | TextConfig
    config_to_hf(cfg, base=None) -> Data2VecAudioConfig | Data2VecVisionConfig | Data2VecTextConfig
    key_map(cfg) -> {our parameter name: HF parameter name}
"""
from __future__ import annotations

from .config import EncoderConfig, ImageConfig, SpeechConfig, TextConfig

HF_MODEL_TYPES = {"data2vec-audio": "speech", "data2vec-vision": "image", "data2vec-text": "text"}


def _pair(v, what: str) -> int:
    """HF image/patch sizes may be an int or an (h, w) pair; d2v_mini supports square ones."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2 or v[0] != v[1]:
            raise NotImplementedError(f"d2v_mini images are square: HF {what} {tuple(v)} cannot be represented")
        return int(v[0])
    return int(v)


def _check(hf, **expected) -> None:
    for name, value in expected.items():
        got = getattr(hf, name, value)
        if got != value:
            raise NotImplementedError(f"HF {hf.model_type} config has {name}={got!r}; d2v_mini encoders only "
                                      f"implement {name}={value!r} (what the released data2vec checkpoints use)")


def config_from_hf(hf) -> EncoderConfig:
    """The d2v_mini encoder config of a Hugging Face Data2Vec{Audio,Vision,Text}Config."""
    kind = HF_MODEL_TYPES.get(getattr(hf, "model_type", None))
    if kind is None:
        raise ValueError(f"expected a data2vec 1.0 config (model_type in {sorted(HF_MODEL_TYPES)}), "
                         f"got model_type={getattr(hf, 'model_type', None)!r}")
    common = dict(dim=hf.hidden_size, depth=hf.num_hidden_layers, heads=hf.num_attention_heads,
                  ffn_dim=hf.intermediate_size, layer_norm_eps=hf.layer_norm_eps)
    _check(hf, hidden_act="gelu")
    if kind == "speech":
        _check(hf, feat_extract_activation="gelu", add_adapter=False)
        conv = tuple((int(c), int(k), int(s)) for c, k, s in zip(hf.conv_dim, hf.conv_kernel, hf.conv_stride))
        if not len(conv) == len(hf.conv_dim) == len(hf.conv_kernel) == len(hf.conv_stride):
            raise ValueError("HF conv_dim, conv_kernel and conv_stride must have the same length")
        return SpeechConfig(**common, norm_first=False, dropout=hf.hidden_dropout, attn_dropout=hf.attention_dropout,
                            activation_dropout=hf.activation_dropout, layerdrop=hf.layerdrop, conv_layers=conv,
                            conv_bias=hf.conv_bias, conv_pos_layers=hf.num_conv_pos_embeddings,  # a layer count
                            conv_pos_kernel=hf.conv_pos_kernel_size, conv_pos_groups=hf.num_conv_pos_embedding_groups,
                            dropout_input=hf.feat_proj_dropout)
    if kind == "image":
        if hf.use_shared_relative_position_bias and hf.use_relative_position_bias:
            raise NotImplementedError("HF config uses both a shared and a per-layer relative position bias; "
                                      "d2v_mini encoders have one or the other")
        rel = ("shared" if hf.use_shared_relative_position_bias
               else "per_layer" if hf.use_relative_position_bias else "none")
        return ImageConfig(**common, norm_first=True, layer_scale_init=float(hf.layer_scale_init_value),
                           key_bias=False, dropout=hf.hidden_dropout_prob, attn_dropout=hf.attention_probs_dropout_prob,
                           activation_dropout=0.0, drop_path=hf.drop_path_rate,
                           image_size=_pair(hf.image_size, "image_size"), patch_size=_pair(hf.patch_size, "patch_size"),
                           in_chans=hf.num_channels, rel_pos_bias=rel, abs_pos_emb=hf.use_absolute_position_embeddings,
                           final_norm=not hf.use_mean_pooling)
    _check(hf, is_decoder=False, add_cross_attention=False)
    _check(hf, position_embedding_type="absolute")  # transformers 4.x option
    mask_idx = getattr(hf, "mask_token_id", None)  # not a HF field: written by `config_to_hf`
    return TextConfig(**common, norm_first=False, dropout=hf.hidden_dropout_prob,
                      attn_dropout=hf.attention_probs_dropout_prob, activation_dropout=0.0,
                      vocab_size=hf.vocab_size, max_positions=hf.max_position_embeddings, pad_idx=hf.pad_token_id,
                      bos_idx=hf.bos_token_id, eos_idx=hf.eos_token_id,
                      mask_idx=hf.vocab_size - 1 if mask_idx is None else mask_idx)  # RoBERTa: <mask> is the last id


def config_to_hf(cfg: EncoderConfig, base=None, type_vocab_size: int = 1):
    """The HF config of a d2v_mini encoder config. `base` (an HF config, e.g. the one an encoder was imported
    from) supplies the fields d2v_mini does not represent (initializer_range, labels, SpecAugment, ...)."""
    import transformers as tf

    if cfg.activation_dropout and not isinstance(cfg, SpeechConfig):
        raise NotImplementedError("HF Data2VecVision / Data2VecText have no activation dropout: set it to 0")
    common = dict(hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                  intermediate_size=cfg.ffn_dim, layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu")
    if isinstance(cfg, SpeechConfig):
        klass = tf.Data2VecAudioConfig
        if cfg.norm_first or cfg.layer_scale_init or not cfg.key_bias or cfg.drop_path:
            raise NotImplementedError("HF Data2VecAudio blocks are post-LN, with key bias, no layer scale, "
                                      "no drop path")
        fields = dict(hidden_dropout=cfg.dropout, attention_dropout=cfg.attn_dropout,
                      activation_dropout=cfg.activation_dropout, layerdrop=cfg.layerdrop,
                      feat_proj_dropout=cfg.dropout_input, conv_dim=[c for c, _, _ in cfg.conv_layers],
                      conv_kernel=[k for _, k, _ in cfg.conv_layers], conv_stride=[s for _, _, s in cfg.conv_layers],
                      conv_bias=cfg.conv_bias, num_conv_pos_embeddings=cfg.conv_pos_layers,
                      conv_pos_kernel_size=cfg.conv_pos_kernel, num_conv_pos_embedding_groups=cfg.conv_pos_groups,
                      feat_extract_activation="gelu")
        if base is None:  # keep `masked_spec_embed` (our mask_emb): HF creates it only when SpecAugment is on
            fields["mask_time_prob"] = 0.05
    elif isinstance(cfg, ImageConfig):
        klass = tf.Data2VecVisionConfig
        if not cfg.norm_first or cfg.key_bias or cfg.layerdrop:
            raise NotImplementedError("HF Data2VecVision blocks are pre-LN, without key bias, without layer drop")
        fields = dict(hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attn_dropout,
                      drop_path_rate=cfg.drop_path, layer_scale_init_value=cfg.layer_scale_init,
                      image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
                      use_shared_relative_position_bias=cfg.rel_pos_bias == "shared",
                      use_relative_position_bias=cfg.rel_pos_bias == "per_layer",
                      use_absolute_position_embeddings=cfg.abs_pos_emb, use_mean_pooling=not cfg.final_norm)
        if base is None:
            fields["use_mask_token"] = True
    elif isinstance(cfg, TextConfig):
        klass = tf.Data2VecTextConfig
        if cfg.norm_first or cfg.layer_scale_init or not cfg.key_bias or cfg.drop_path or cfg.layerdrop:
            raise NotImplementedError("HF Data2VecText blocks are post-LN, with key bias, without layer scale, "
                                      "drop path or layer drop")
        fields = dict(hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attn_dropout,
                      vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_positions, pad_token_id=cfg.pad_idx,
                      bos_token_id=cfg.bos_idx, eos_token_id=cfg.eos_idx, mask_token_id=cfg.mask_idx,
                      type_vocab_size=type_vocab_size)
    else:
        raise TypeError(f"expected a SpeechConfig, ImageConfig or TextConfig, got {type(cfg).__name__}")
    if base is not None and not isinstance(base, klass):
        raise TypeError(f"base config is a {type(base).__name__}, expected a {klass.__name__}")
    return klass(**{**(base.to_dict() if base is not None else {}), **common, **fields})


def key_map(cfg: EncoderConfig) -> dict[str, str]:
    """{d2v_mini parameter name: HF parameter name} for every parameter of the encoder built from `cfg`."""
    m: dict[str, str] = {}
    wb = ("weight", "bias")
    if isinstance(cfg, SpeechConfig):
        for i in range(len(cfg.conv_layers)):
            m[f"feature_encoder.layers.{i}.conv.weight"] = f"feature_extractor.conv_layers.{i}.conv.weight"
            if cfg.conv_bias:
                m[f"feature_encoder.layers.{i}.conv.bias"] = f"feature_extractor.conv_layers.{i}.conv.bias"
            for p in wb:
                m[f"feature_encoder.layers.{i}.norm.{p}"] = f"feature_extractor.conv_layers.{i}.layer_norm.{p}"
        for l in range(cfg.conv_pos_layers):  # noqa: E741
            for p in wb:
                m[f"pos_conv.convs.{l}.{p}"] = f"encoder.pos_conv_embed.layers.{l}.conv.{p}"
        for p in wb:
            m[f"feature_norm.{p}"] = f"feature_projection.layer_norm.{p}"
            m[f"feature_proj.{p}"] = f"feature_projection.projection.{p}"
            m[f"norm.{p}"] = f"encoder.layer_norm.{p}"
        m["mask_emb"] = "masked_spec_embed"
        block = {"attn.q": "attention.q_proj", "attn.k": "attention.k_proj", "attn.v": "attention.v_proj",
                 "attn.out": "attention.out_proj", "norm1": "layer_norm", "fc1": "feed_forward.intermediate_dense",
                 "fc2": "feed_forward.output_dense", "norm2": "final_layer_norm"}
        layer = "encoder.layers"
    elif isinstance(cfg, ImageConfig):
        for p in wb:
            m[f"patch_embed.{p}"] = f"embeddings.patch_embeddings.projection.{p}"
            if cfg.final_norm:
                m[f"norm.{p}"] = f"layernorm.{p}"
        m["cls_token"], m["mask_token"] = "embeddings.cls_token", "embeddings.mask_token"
        if cfg.abs_pos_emb:
            m["pos_embed"] = "embeddings.position_embeddings"
        table = "relative_position_bias.relative_position_bias_table"
        if cfg.rel_pos_bias == "shared":
            m["rel_pos.table"] = f"encoder.{table}"
        for j in range(cfg.depth):
            if cfg.rel_pos_bias == "per_layer":
                m[f"rel_pos.{j}.table"] = f"encoder.layer.{j}.attention.attention.{table}"
            if cfg.layer_scale_init > 0:
                m[f"transformer.blocks.{j}.gamma1"] = f"encoder.layer.{j}.lambda_1"
                m[f"transformer.blocks.{j}.gamma2"] = f"encoder.layer.{j}.lambda_2"
        block = {"attn.q": "attention.attention.query", "attn.k": "attention.attention.key",
                 "attn.v": "attention.attention.value", "attn.out": "attention.output.dense",
                 "norm1": "layernorm_before", "fc1": "intermediate.dense", "fc2": "output.dense",
                 "norm2": "layernorm_after"}
        layer = "encoder.layer"
    elif isinstance(cfg, TextConfig):
        m["tokens.weight"] = "embeddings.word_embeddings.weight"
        m["positions.weight"] = "embeddings.position_embeddings.weight"  # + token type 0 (folded, see hf.py)
        for p in wb:
            m[f"emb_norm.{p}"] = f"embeddings.LayerNorm.{p}"
        block = {"attn.q": "attention.self.query", "attn.k": "attention.self.key", "attn.v": "attention.self.value",
                 "attn.out": "attention.output.dense", "norm1": "attention.output.LayerNorm",
                 "fc1": "intermediate.dense", "fc2": "output.dense", "norm2": "output.LayerNorm"}
        layer = "encoder.layer"
    else:
        raise TypeError(f"expected a SpeechConfig, ImageConfig or TextConfig, got {type(cfg).__name__}")
    for j in range(cfg.depth):
        for ours, theirs in block.items():
            for p in wb:
                if not (ours == "attn.k" and p == "bias" and not cfg.key_bias):
                    m[f"transformer.blocks.{j}.{ours}.{p}"] = f"{layer}.{j}.{theirs}.{p}"
    return m
