"""The released initialisation of each modality (`TransformerConfig.init = "released"`, the default).

    speech (fairseq wav2vec2.py / data2vec_audio.py)
        conv feature encoder      kaiming_normal_ (std sqrt(2 / fan_in)), no bias
        Transformer blocks        init_bert_params: every Linear N(0, 0.02), bias 0
        conv positions            PyTorch default (pos_conv_depth > 1: `make_conv_block`, which
                                  init_bert_params does not touch; no weight norm)
        feature projection, head  PyTorch default (post_extract_proj, final_proj: outside the encoder)
        mask_emb                  U[0, 1)
    text (fairseq data2vec_text.py: `self.apply(init_bert_params)` on the whole model)
        every Linear, head too    N(0, 0.02), bias 0
        token / position tables   N(0, 0.02), padding row 0
    image (data2vec-vision beit/modeling_cyclical.py)
        every Linear, head too    trunc_normal_(std 0.02), bias 0; the fork truncates at +-std
        patch embedding conv      (a=-std, b=std), so the drawn weights have std 0.54 * 0.02 = 0.0108
        cls / mask token, abs pos the same truncated normal
        relative position table   0 (BEiT's trunc_normal_ of the table is commented out)
        `fix_init_weight`         block l (1..L): attention output and fc2 weights / sqrt(2 l)
    LayerNorms: weight 1, bias 0 everywhere (PyTorch's default, also what BEiT sets).

`init = "torch"` keeps what the modules do on construction: PyTorch's defaults, with the text tables at
N(0, 0.02) and the image tokens at trunc_normal_(0.02) (d2v_mini before the released init).
"""
from __future__ import annotations

import math

import torch
from torch import nn

BERT_STD = 0.02  # init_bert_params
BEIT_STD = 0.02  # data2vec-vision init_std


def bert_normal_(module: nn.Module) -> None:
    """fairseq `init_bert_params` on every submodule: Linear N(0, 0.02) + zero bias, Embedding N(0, 0.02)
    with its padding row zeroed (nn.Embedding.padding_idx)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=BERT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=BERT_STD)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


def beit_trunc_normal_(t: torch.Tensor, std: float = BEIT_STD) -> torch.Tensor:
    """data2vec-vision's `trunc_normal_`: N(0, std) truncated to [-std, std] (not +-2 std)."""
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-std, b=std)


def init_speech(encoder: nn.Module) -> None:
    """wav2vec 2.0 / data2vec-audio: kaiming-normal CNN, init_bert_params in the blocks (see module doc)."""
    for layer in encoder.feature_encoder.layers:
        nn.init.kaiming_normal_(layer.conv.weight)
    bert_normal_(encoder.transformer)
    with torch.no_grad():
        encoder.mask_emb.uniform_()


def init_text(encoder: nn.Module) -> None:
    """RoBERTa / data2vec-text: init_bert_params on the whole encoder."""
    bert_normal_(encoder)


def init_image(encoder: nn.Module) -> None:
    """BEiT / data2vec-vision `_init_weights` + `fix_init_weight` (see module doc)."""
    for m in encoder.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            beit_trunc_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for p in (encoder.cls_token, encoder.mask_token, encoder.pos_embed):
        if p is not None:
            beit_trunc_normal_(p)
    with torch.no_grad():
        for layer_id, block in enumerate(encoder.transformer.blocks, start=1):
            block.attn.out.weight.div_(math.sqrt(2.0 * layer_id))
            block.fc2.weight.div_(math.sqrt(2.0 * layer_id))
    rel = encoder.rel_pos if isinstance(encoder.rel_pos, nn.ModuleList) else [encoder.rel_pos]
    for rp in rel:
        if rp is not None:
            nn.init.zeros_(rp.table)


def init_head(head: nn.Module, modality: str) -> None:
    """The regression head: speech keeps PyTorch's default (fairseq final_proj), text N(0, 0.02)
    (init_bert_params), images the truncated normal of BEiT's lm_head; biases 0 for text and images."""
    if modality == "text":
        bert_normal_(head)
    elif modality == "image":
        for m in head.modules():
            if isinstance(m, nn.Linear):
                beit_trunc_normal_(m.weight)
                nn.init.zeros_(m.bias)
    elif modality != "speech":
        raise ValueError(f"unknown modality {modality!r}: expected 'speech', 'image' or 'text'")


def init_image_v2(encoder: nn.Module) -> None:
    """data2vec 2.0 images (fairseq data2vec2.py + modalities/images.py, recipes doc section 4.7 C2):
    init_bert_params (every Linear N(0, 0.02), not truncated, no 1/sqrt(2 l)), the patch-embedding conv
    xavier_uniform_ on its flattened [D, C p p] weight (MAE), LayerNorms 1 / 0; CLS N(0, 1) (set by the encoder)."""
    bert_normal_(encoder)
    w = encoder.patch_embed.weight
    with torch.no_grad():
        flat = torch.empty(w.shape[0], w[0].numel())
        nn.init.xavier_uniform_(flat)
        w.copy_(flat.view_as(w))
    for m in encoder.modules():
        if isinstance(m, nn.LayerNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_decoder(decoder: nn.Module, modality: str) -> None:
    """The 2.0 decoder: convs keep PyTorch's default (init_bert_params skips convs); the projection is
    N(0, 0.02) for text (init_bert_params) and PyTorch's default for speech and images (their encoders'
    `reset_parameters` re-initialise it after init_bert_params)."""
    if modality == "text":
        bert_normal_(decoder.proj)
    elif modality in ("speech", "image"):
        for m in decoder.proj.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
    else:
        raise ValueError(f"unknown modality {modality!r}: expected 'speech', 'image' or 'text'")


INIT = {"speech": init_speech, "image": init_image, "text": init_text}


def check_init(kind: str) -> str:
    """`kind` if it is "released" or "torch", else a ValueError saying what is expected."""
    if kind not in ("released", "torch"):
        raise ValueError(f"encoder.init must be 'released' (the released code's init per modality) or 'torch' "
                         f"(PyTorch's module defaults), got {kind!r}")
    return kind
