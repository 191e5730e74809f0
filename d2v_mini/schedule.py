"""Optimiser and learning-rate schedules of the data2vec 1.0 recipes.

    AdamW(betas, eps, weight_decay)  decayed parameters: `OptimConfig.decay_groups` (see param_groups)
    lr(s) = cfg.lr * factor(s)       s = optimizer steps done (torch LambdaLR)

Three schedules (`OptimConfig.schedule`), T = total_steps, w = warmup_steps:
  - cosine    (BEiT, data2vec vision and text): s / w during warm-up, then
              m + (1 - m) * (1 + cos(pi * (s - w) / (T - w))) / 2, m = min_lr_ratio; m after T.
  - tri_stage (fairseq, data2vec speech): phases of ratios (r0, r1, r2) of T: linear 0.01 -> 1,
              hold 1, then decay to 0.01, exponential exp(-ln(100) * t / d) (fairseq code) or linear
              (the paper's wording), and 0.01 after. `warmup_steps` is ignored: the ratios rule, as
              fairseq's `phase_ratio` does.
  - constant  warm-up s / w, then 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig

TRI_STAGE_INIT_SCALE = 0.01  # fairseq init_lr_scale
TRI_STAGE_FINAL_SCALE = 0.01  # fairseq final_lr_scale
# BEiT / data2vec-vision: `no_weight_decay()` of VisionTransformerForCyclicalTraining (exact top-level names)
BEIT_SKIP = ("cls_token", "pos_embed")
# decay_groups="no_1d" (d2v_mini before the released groups): not decayed either, besides 1-D parameters
NO_DECAY_NAMES = ("cls_token", "mask_token", "mask_emb", "pos_embed", "rel_pos")


def decays(name: str, p: torch.Tensor, rule: str, modality: str) -> bool:
    """Whether the parameter `name` (of a Data2Vec model or a bare encoder) is weight-decayed.

    rule "released": speech, text: every parameter (fairseq's Adam decays all of them, no parameter groups);
                     image: all but 1-D parameters, biases, cls_token and pos_embed (BEiT optim_factory
                     `get_parameter_groups` with the model's `no_weight_decay()`): the patch embedding,
                     mask_token, relative position tables and every Linear weight decay.
    rule "no_1d":    all but 1-D parameters, biases, CLS / mask tokens, mask_emb, absolute positions and
                     relative position tables, in every modality."""
    if rule == "no_1d":
        return not (p.ndim <= 1 or name.endswith(".bias") or any(k in name for k in NO_DECAY_NAMES))
    if rule != "released":
        raise ValueError(f"unknown decay_groups {rule!r}: expected 'released' or 'no_1d'")
    if modality in ("speech", "text"):
        return True
    if modality == "image":
        return not (p.ndim <= 1 or name.endswith(".bias") or name.removeprefix("student.") in BEIT_SKIP)
    raise ValueError(f"decay_groups='released' depends on the modality: got {modality!r}, expected "
                     f"'speech', 'image' or 'text' (pass modality=, or a model with cfg.modality)")


def param_groups(model: nn.Module, weight_decay: float, rule: str = "released",
                 modality: str | None = None) -> list[dict]:
    """Two AdamW groups over the trainable parameters, "decay" and "no_decay", split by `decays`
    (`rule` = OptimConfig.decay_groups; `modality` defaults to model.cfg.modality). The teacher
    (requires_grad False) is left out."""
    if modality is None:
        modality = getattr(getattr(model, "cfg", None), "modality", None)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decays(name, p, rule, modality) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with the recipe's lr, betas, eps and weight decay (decoupled, like fairseq's Adam).

    fused: torch's fused kernel (one launch per step for all parameters); None = when every trainable
    parameter is on a GPU. Where the fused kernel is refused (device, dtype, torch build), the default
    (foreach) implementation is used: the same update."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_groups)
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = bool(params) and all(p.is_cuda for p in params)
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, **kw)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int | None = None) -> float:
    """The multiplier of cfg.lr after `step` optimizer steps (the closed forms of the module docstring)."""
    total = cfg.total_steps if total_steps is None else total_steps
    if total <= 0:
        raise ValueError(f"total_steps must be positive, got {total}")
    if cfg.schedule == "tri_stage":
        r = cfg.tri_stage_ratios
        if len(r) != 3 or abs(sum(r) - 1.0) > 1e-6:
            raise ValueError(f"tri_stage_ratios must be 3 fractions of total_steps summing to 1, got {r}")
        w, h, d = (round(total * x) for x in r)  # fairseq int() would turn 0.29 * 100 into 28
        if step < w:
            return TRI_STAGE_INIT_SCALE + (1 - TRI_STAGE_INIT_SCALE) * step / w
        if step < w + h:
            return 1.0
        t = step - w - h
        if t <= d and d > 0:
            if cfg.tri_stage_decay == "exponential":
                return math.exp(math.log(TRI_STAGE_FINAL_SCALE) * t / d)
            if cfg.tri_stage_decay == "linear":
                return 1.0 - (1.0 - TRI_STAGE_FINAL_SCALE) * t / d
            raise ValueError(f"unknown tri_stage_decay {cfg.tri_stage_decay!r}: expected 'exponential' or 'linear'")
        return TRI_STAGE_FINAL_SCALE
    w = min(cfg.warmup_steps, total)
    if step < w:
        return step / w
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        m = cfg.min_lr_ratio
        progress = min((step - w) / max(total - w, 1), 1.0)
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {cfg.schedule!r}: expected 'cosine', 'tri_stage' or 'constant'")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR giving lr = cfg.lr * lr_factor(s) for the s-th optimizer step (s = 0 first).

    Call `scheduler.step()` once after every `optimizer.step()`. total_steps: the schedule's length
    (default cfg.total_steps); past it the lr stays at its final value."""
    lr_factor(0, cfg, total_steps)  # validate the config now, not at the first step

    def factor(step: int) -> float:
        return lr_factor(step, cfg, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
