"""Shared fixtures: the offline data mirror, a private cache, tiny models and batches."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from d2v_mini.presets import preset

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "data"


def pytest_configure(config):
    # CI sets D2V_DATA to the shared mirror; a developer checkout next to ../shared gets it too.
    if "D2V_DATA" not in os.environ and MIRROR.exists():
        os.environ["D2V_DATA"] = str(MIRROR)
    # A test never reaches the internet: a missing data set fails at once, unless a mirror URL is given
    # (then the tests download what they need from it). tests/test_download.py sets both explicitly.
    if "D2V_DOWNLOAD" not in os.environ and "D2V_MIRROR_URL" not in os.environ:
        os.environ["D2V_DOWNLOAD"] = "never"
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Derived data (unpacked archives, trained tokenizers) goes to a per-session cache, unless set."""
    if "D2V_CACHE" not in os.environ:
        os.environ["D2V_CACHE"] = str(tmp_path_factory.mktemp("d2v_cache"))
    yield


def tiny_batch(modality: str, batch: int = 4, seed: int = 0):
    """A batch for the tiny preset of `modality`: (source, padding_mask)."""
    g = torch.Generator().manual_seed(seed)
    cfg = preset(modality, "tiny")
    if modality == "speech":
        t = torch.linspace(0, 1, 8000)
        freqs = 200 + 600 * torch.rand(batch, 1, generator=g)
        wav = torch.sin(2 * torch.pi * freqs * t) + 0.1 * torch.randn(batch, 8000, generator=g)
        return wav, None
    if modality == "image":
        s = cfg.encoder.image_size  # smooth random images: masked patches are predictable from context
        low = torch.randn(batch, 3, 4, 4, generator=g)
        return torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False), None
    tokens = torch.randint(5, cfg.encoder.vocab_size, (batch, 32), generator=g)
    tokens[:, 0], tokens[:, -1] = cfg.encoder.bos_idx, cfg.encoder.eos_idx
    return tokens, None


def fit_fixed_batch(model, x, padding_mask, steps: int, lr: float = 2e-3) -> list[float]:
    """`steps` AdamW + `ema_step` updates of a data2vec model (1.0 or 2.0) on one batch, a fresh seeded mask
    each step. Returns the loss of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        out = model(x, padding_mask, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.ema_step()
        losses.append(out.loss.item())
    return losses


@pytest.fixture(params=["speech", "image", "text"])
def modality(request):
    return request.param
