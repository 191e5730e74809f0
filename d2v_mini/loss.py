"""The regression head and loss, computed on masked positions only.

fairseq (speech, text):  loss = sum_{masked} sum_d l_beta(pred - y) * s  /  #masked,  s = 1/sqrt(D) or 1
BEiT / data2vec vision:  loss = mean over every masked element of smooth_l1(pred - y, beta)
where l_beta is the squared error for beta = 0 and Smooth-L1 with that beta otherwise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import LossConfig


class RegressionHead(nn.Module):
    """Student output -> prediction. 1 layer: Linear(D, D); 2 layers: Linear(D, 2D) -> GELU -> Linear(2D, D)."""

    def __init__(self, dim: int, layers: int = 1):
        super().__init__()
        if layers == 1:
            self.net = nn.Linear(dim, dim)
        elif layers == 2:
            self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        else:
            raise ValueError(f"head_layers must be 1 or 2, got {layers}")

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., D] -> [..., D]"""
        return self.net(x)


def regression_loss(pred: Tensor, target: Tensor, cfg: LossConfig) -> Tensor:
    """pred, target: [N, D] at the N masked positions. Returns a scalar (fp32)."""
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must both be [N, D], got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.float(), target.float()
    if cfg.beta == 0:
        elem = F.mse_loss(pred, target, reduction="none")
    else:
        elem = F.smooth_l1_loss(pred, target, reduction="none", beta=cfg.beta)
    if cfg.reduction == "mean":  # nothing masked: 0 (with a gradient), as the "sum" reduction gives
        return elem.mean() if elem.numel() else elem.sum()
    scale = 1 / math.sqrt(pred.shape[-1]) if cfg.scale is None else cfg.scale
    return elem.sum(-1).mul(scale).sum() / max(pred.shape[0], 1)


def feature_std(x: Tensor) -> Tensor:
    """fairseq's `compute_var`: the std of each channel over all positions, averaged over channels.

    x: [N, D]. fairseq logs this as target_var / pred_var; a collapsed teacher drives it to 0."""
    x = rearrange(x.float(), "... d -> (...) d")
    if x.shape[0] < 2:
        return torch.zeros((), device=x.device)
    return torch.sqrt(x.var(dim=0) + 1e-6).mean()
