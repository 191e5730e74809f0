"""Evaluation: a linear probe on frozen, mean-pooled features, and a small full fine-tuning.

    encoder(x) --layer ("last" / block index / "mean" of blocks)--> [B, T, D]
               --mean over non-padded positions (images: patches, CLS excluded)--> [B, D]
    features --standardise with the train statistics--> logistic regression (full-batch L-BFGS)

The L2 strength of the probe is chosen on a held-out 20% of the *train* split (the test split is
touched once, at the end), and the same protocol runs for a pretrained encoder and for
`random_init_encoder`, a freshly initialised encoder of the same shape: the baseline any
pretraining has to beat.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .config import Data2VecConfig
from .encoder import Encoder, build_encoder
from .masking import check_mask
from .transformer import EncoderOutput

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)  # the probe's L2 grid (per-sample mean loss + wd/2 * ||W||^2)


# ----------------------------------------------------------------------------------------- features
def select_layer(out: EncoderOutput, layer: int | str = "last") -> Tensor:
    """The representation to probe, [B, T, D]: "last" = last_hidden_state, an int = hidden_states[layer]
    (0 = the input of block 0, L = the output of the last block, negative counts from the end),
    "mean" = the average of the L block outputs hidden_states[1:]."""
    if layer == "last":
        return out.last_hidden_state
    if layer == "mean":
        return reduce(torch.stack(out.hidden_states[1:]), "l b t d -> b t d", "mean")
    if isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
        i, n = int(layer), len(out.hidden_states)
        if not -n <= i < n:
            raise ValueError(f"layer {i} out of range: the encoder has hidden_states 0..{n - 1}")
        return out.hidden_states[i]
    raise ValueError(f"layer must be 'last', 'mean' or an int index into hidden_states, got {layer!r}")


def masked_mean(x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Mean over the non-padded positions. x: [B, T, D]; padding_mask: bool [B, T] (True = pad) -> [B, D]."""
    if padding_mask is None:
        return reduce(x, "b t d -> b d", "mean")
    keep = rearrange((~check_mask(padding_mask, tuple(x.shape[:2]), "padding_mask")).to(x.dtype), "b t -> b t 1")
    return reduce(x * keep, "b t d -> b d", "sum") / reduce(keep, "b t 1 -> b 1", "sum").clamp_min(1)


def pool(encoder: Encoder, out: EncoderOutput, layer: int | str = "last", cls: bool = False) -> Tensor:
    """One vector per example [B, D]: the mean over the non-padded feature positions of `layer`
    (for encoders with a CLS token, over the patches only), or the CLS token itself if `cls`."""
    h = select_layer(out, layer)
    if encoder.has_cls:
        return h[:, 0] if cls else reduce(h[:, 1:], "b t d -> b d", "mean")
    if cls:
        raise ValueError(f"{type(encoder).__name__} has no CLS token: use cls=False (mean pooling)")
    return masked_mean(h, out.padding_mask)


def as_encoder(model: nn.Module, which: str = "student") -> Encoder:
    """The encoder to evaluate: an `Encoder` itself, or a `Data2Vec`'s student (or EMA teacher)."""
    if isinstance(model, Encoder):
        return model
    if hasattr(model, "student") and hasattr(model, "teacher"):
        return model.student if which == "student" else model.teacher.model
    raise TypeError(f"expected an Encoder or a Data2Vec model, got {type(model).__name__}")


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Dataset, collate_fn: Callable | None = None, *,
                     layer: int | str = "last", batch_size: int = 64, device: str | torch.device = "cpu",
                     cls: bool = False, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """Frozen features of a labelled data set (items dict(source, label)).

    Returns (features float [N, D], labels long [N]) in data set order. The encoder runs in eval mode
    under no_grad; its train/eval state is restored afterwards."""
    encoder = as_encoder(encoder)
    was_training = encoder.training
    encoder.eval().to(device)
    feats, labels = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                                num_workers=num_workers):
            if "label" not in batch:
                raise KeyError("the probe data set must yield items with a 'label' (dict(source=..., label=...))")
            pm = batch.get("padding_mask")
            out = encoder(batch["source"].to(device), padding_mask=None if pm is None else pm.to(device))
            feats.append(pool(encoder, out, layer, cls).float().cpu())
            labels.append(torch.as_tensor(batch["label"]).long())
    finally:
        encoder.train(was_training)
    if not feats:
        raise ValueError("the probe data set is empty")
    return torch.cat(feats), torch.cat(labels)


# ------------------------------------------------------------------------------------- linear probe
def _fit_logreg(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, steps: int) -> nn.Linear:
    """Multinomial logistic regression, full-batch L-BFGS. x: [N, D] (standardised); y: long [N]."""
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(head.weight)  # a convex problem: a fixed start gives the same answer every time
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _accuracy(head: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (head(x).argmax(-1) == y).float().mean().item()


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *,
                 num_classes: int | None = None, weight_decay: float | Sequence[float] = WEIGHT_DECAYS,
                 steps: int = 100, val_frac: float = 0.2, seed: int = 0) -> dict:
    """Logistic regression on frozen features. train_feats: [N, D], train_labels: long [N]; test: [M, D], [M].

    Features are standardised with the train mean / std. With several `weight_decay` values, each is
    fitted on a random (1 - val_frac) of the train split and scored on the rest; the best is refitted
    on the whole train split. Deterministic (the split is seeded, the optimiser is full-batch).
    Returns dict(accuracy (test), train_accuracy, weight_decay, val_accuracy (None without a grid))."""
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {tuple(train_feats.shape)} and "
                         f"{tuple(test_feats.shape)}")
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise ValueError("features and labels must have the same number of rows")
    c = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    xtr, xte = (train_feats.float() - mean) / std, (test_feats.float() - mean) / std
    ytr, yte = train_labels.long(), test_labels.long()
    grid = [weight_decay] if isinstance(weight_decay, (int, float)) else list(weight_decay)
    best, val_acc = grid[0], None
    if len(grid) > 1:
        perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(val_frac * len(xtr)))
        va, fi = perm[:n_val], perm[n_val:]
        scores = [_accuracy(_fit_logreg(xtr[fi], ytr[fi], c, wd, steps), xtr[va], ytr[va]) for wd in grid]
        i = max(range(len(grid)), key=lambda k: (scores[k], grid[k]))  # ties: the stronger regulariser
        best, val_acc = grid[i], scores[i]
    head = _fit_logreg(xtr, ytr, c, best, steps)
    return dict(accuracy=_accuracy(head, xte, yte), train_accuracy=_accuracy(head, xtr, ytr),
                weight_decay=best, val_accuracy=val_acc)


def probe(encoder: nn.Module, task, *, layer: int | str = "last", batch_size: int = 64, device="cpu",
          cls: bool = False, **probe_kw) -> dict:
    """Linear probe of a frozen encoder on a `ProbeTask` (train / test data sets, num_classes, collate_fn).

    Returns linear_probe's dict plus task, layer, num_train, num_test and feature_dim."""
    kw = dict(layer=layer, batch_size=batch_size, device=device, cls=cls)
    xtr, ytr = extract_features(encoder, task.train, task.collate_fn, **kw)
    xte, yte = extract_features(encoder, task.test, task.collate_fn, **kw)
    res = linear_probe(xtr, ytr, xte, yte, num_classes=task.num_classes, **probe_kw)
    return dict(res, task=task.name, layer=layer, num_train=len(ytr), num_test=len(yte), feature_dim=xtr.shape[1])


def random_init_encoder(cfg: Data2VecConfig, seed: int = 0) -> Encoder:
    """A freshly initialised encoder of the same shape as `cfg`'s (the probe's baseline), seeded
    without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_encoder(cfg).eval()


# --------------------------------------------------------------------------------------- fine-tuning
class Classifier(nn.Module):
    """encoder -> mean-pooled last layer [B, D] -> LayerNorm -> Linear -> logits [B, C]."""

    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.norm = nn.LayerNorm(encoder.cfg.dim)
        self.head = nn.Linear(encoder.cfg.dim, num_classes)

    def forward(self, source: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """source: the encoder's input [B, ...]. Returns logits [B, C]."""
        out = self.encoder(source, padding_mask=padding_mask)
        return self.head(self.norm(pool(self.encoder, out)))


def finetune(encoder: nn.Module, task, *, epochs: int = 3, lr: float = 1e-3, head_lr: float | None = None,
             weight_decay: float = 0.01, batch_size: int = 32, device="cpu", seed: int = 0) -> dict:
    """Fine-tune a copy of the encoder with a linear head on mean-pooled features (AdamW, cosine decay
    with a 10% linear warm-up, cross-entropy). The encoder passed in is not modified.

    Returns dict(accuracy (test), train_accuracy (last epoch, running), losses (per epoch), model)."""
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(as_encoder(encoder)), task.num_classes).to(device)
    groups = [{"params": model.encoder.parameters(), "lr": lr},
              {"params": [*model.norm.parameters(), *model.head.parameters()], "lr": head_lr or lr}]
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(task.train, batch_size=batch_size, shuffle=True, collate_fn=task.collate_fn, generator=g)
    total = max(1, epochs * len(loader))
    warm = max(1, total // 10)
    def factor(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses, correct, seen = [], 0, 0
    for _ in range(epochs):
        model.train()
        run, correct, seen = 0.0, 0, 0
        for batch in loader:
            pm = batch.get("padding_mask")
            logits = model(batch["source"].to(device), None if pm is None else pm.to(device))
            y = batch["label"].to(device)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += loss.item() * len(y)
            correct += (logits.argmax(-1) == y).sum().item()
            seen += len(y)
        losses.append(run / max(seen, 1))
    model.eval()
    hits, n = 0, 0
    with torch.no_grad():
        for batch in DataLoader(task.test, batch_size=batch_size, collate_fn=task.collate_fn):
            pm = batch.get("padding_mask")
            logits = model(batch["source"].to(device), None if pm is None else pm.to(device))
            hits += (logits.argmax(-1).cpu() == batch["label"]).sum().item()
            n += len(batch["label"])
    return dict(accuracy=hits / max(n, 1), train_accuracy=correct / max(seen, 1), losses=losses, model=model)
