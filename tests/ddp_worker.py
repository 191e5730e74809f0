"""Tiny synthetic pretraining setups for the trainer tests, and a DDP worker run by torchrun:

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR

Each rank runs `pretrain` on CPU (gloo), as launched by torchrun (the trainer joins the process group
from the environment): the test's comparison run (precomputed masks, accumulation 2), a run with layer
drop 0.3 (DDP must find the unused parameters of skipped blocks), and 5 steps straight vs 2 + resume. Each rank saves its
histories and final state dicts to OUT_DIR/rank{r}.pt for the test to compare.
"""
from __future__ import annotations

import os
import sys

import torch

from d2v_mini.config import Data2VecConfig, override
from d2v_mini.presets import preset
from d2v_mini.train import TrainOptions, pretrain


def tiny_cfg(**changes) -> Data2VecConfig:
    """The image tiny preset (32 x 32 images, 64 patches) shrunk to a 2-block, 32-wide encoder, global
    batch 8, a 20-step cosine schedule with 4 warm-up steps, no dropout; the tiny preset's collapse guard
    starts after 50 steps, so it never checks these runs."""
    base = {"encoder.dim": 32, "encoder.heads": 2, "encoder.ffn_dim": 64, "encoder.depth": 2, "targets.top_k": 2,
            "optim.batch_size": 8, "optim.total_steps": 20, "optim.warmup_steps": 4, "optim.lr": 2e-3,
            "ema.anneal_steps": 10}
    cfg = override(preset("image", "tiny"), **{**base, **changes})
    assert cfg.encoder.dropout == cfg.encoder.attn_dropout == cfg.encoder.drop_path == 0.0
    return cfg


def synthetic_images(n: int = 40, seed: int = 0, masks: bool = False) -> list[dict]:
    """n items {source: float [3, 32, 32], label} and, if `masks`, a precomputed mask bool [64] per item
    with a random number (8..40) of masked patches, so that ranks see different masked counts."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        item = {"source": torch.randn(3, 32, 32, generator=g), "label": i % 4}
        if masks:
            k = int(torch.randint(8, 41, (), generator=g))
            m = torch.zeros(64, dtype=torch.bool)
            m[torch.randperm(64, generator=g)[:k]] = True
            item["mask"] = m
        items.append(item)
    return items


DDP_STEPS = 6


def ddp_cfg() -> Data2VecConfig:
    return tiny_cfg(**{"optim.accum_steps": 2})  # 2 ranks x 2 micro-batches of 2 = the global batch of 8


LAYERDROP_STEPS = 6


def layerdrop_cfg() -> Data2VecConfig:
    return tiny_cfg(**{"encoder.layerdrop": 0.3, "encoder.depth": 4})


class SizedItems(list):
    """A list of items with per-item `sizes`, for batching by total size (cfg.optim.max_tokens)."""

    def __init__(self, items: list[dict], sizes: list[int]):
        super().__init__(items)
        self.sizes = sizes


def token_data() -> SizedItems:
    """synthetic_images(masks=True) with sizes 1..4: budget 8 gives batches of 2 to 8 images."""
    return SizedItems(synthetic_images(masks=True), [1 + (7 * i) % 4 for i in range(40)])


def token_cfg(accum_steps: int = 1) -> Data2VecConfig:
    """Batches of <= 8 size units, 2 per update: 2 ranks x 1, or 1 process x accum_steps 2."""
    return tiny_cfg(**{"optim.max_tokens": 8, "optim.batch_size": 2, "optim.accum_steps": accum_steps})


def main(out_dir: str) -> None:
    rank = int(os.environ["RANK"])
    data = synthetic_images(masks=True)
    res = pretrain(ddp_cfg(), data, opts=TrainOptions(steps=DDP_STEPS, out_dir=os.path.join(out_dir, "run"),
                                                       device="cpu", log_every=1, progress=False))
    drop = pretrain(layerdrop_cfg(), data,
                    opts=TrainOptions(steps=LAYERDROP_STEPS, out_dir=os.path.join(out_dir, "layerdrop"), device="cpu",
                                      log_every=2, progress=False))
    # exact resume under DDP, with masks drawn by the model from each rank's generator
    plain = synthetic_images()
    opts = dict(device="cpu", log_every=1, progress=False)
    straight = pretrain(ddp_cfg(), plain, opts=TrainOptions(steps=5, out_dir=os.path.join(out_dir, "straight"), **opts))
    resumed_dir = os.path.join(out_dir, "resumed")
    first = pretrain(ddp_cfg(), plain, opts=TrainOptions(steps=2, out_dir=resumed_dir, **opts))
    second = pretrain(ddp_cfg(), plain, opts=TrainOptions(steps=5, out_dir=resumed_dir, resume=True, **opts))
    token = pretrain(token_cfg(), token_data(),  # batching by size (max_tokens): 2 ranks x 1 batch per update
                     opts=TrainOptions(steps=DDP_STEPS, out_dir=os.path.join(out_dir, "token"), **opts))
    torch.save({"history": res.history, "model": res.model.state_dict(),
                "straight": [h["loss"] for h in straight.history], "straight_model": straight.model.state_dict(),
                "resumed": [h["loss"] for h in first.history + second.history],
                "resumed_model": second.model.state_dict(),
                "layerdrop_teacher": drop.model.teacher.state_dict(),
                "layerdrop_student": drop.model.student.state_dict(),
                "token_history": token.history, "token_model": token.model.state_dict()},
               os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
