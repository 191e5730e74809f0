"""What every notebook's first cell does: detect Colab, pick the device and the profile.

    from d2v_mini.notebook import setup
    P = setup()          # P.device, P.profile ("tiny" on CPU / CI, "small" on a GPU), P.preset, P.scale
    enc = released_encoder("speech")   # facebook/data2vec-audio-base online; None (and a note) offline / CI

The profile can be forced with the environment variable D2V_PROFILE (tiny | small | base): CI and the
committed outputs use `tiny`, which runs each notebook in a few minutes on 2 CPU cores.

On Colab, `setup()` installs any missing package the notebooks import (the setup cell's `%pip install`
line normally brings them), puts the data root on the session's disk (`/content/d2v_data`, unless D2V_DATA
is set) and allows downloads, so a fresh runtime fetches each data set on first use. Elsewhere, with
D2V_DATA unset, a source checkout's `data/` folder is the data root (wherever Jupyter was started).
"""
from __future__ import annotations

import importlib.util
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COLAB_DATA = "/content/d2v_data"  # the data root on a Colab runtime's disk
# module imported by the notebooks -> pip requirement (Colab ships most; `setup()` installs what is missing)
COLAB_PACKAGES = {"einops": "einops>=0.7", "soundfile": "soundfile>=0.12", "tokenizers": "tokenizers>=0.15",
                  "datasets": "datasets>=2.18", "transformers": "transformers>=4.40"}
RELEASED_BASE = {"speech": "facebook/data2vec-audio-base", "image": "facebook/data2vec-vision-base",
                 "text": "facebook/data2vec-text-base"}
PROFILES = ("tiny", "small", "base")
# How much longer than the tiny profile a profile trains (steps) and how much more data it uses; the small
# presets are sized for 10 x 300 steps (presets.SMALL_STEPS, the budget in presets.py's docstring).
SCALE = {"tiny": 1, "small": 10, "base": 100}


@dataclass
class Profile:
    profile: str  # tiny | small | base
    preset: str  # the preset name of d2v_mini.presets to use
    device: str  # "cuda" or "cpu"
    scale: int  # multiplier on steps / data sizes relative to the tiny profile
    on_colab: bool
    seed: int

    def steps(self, tiny_steps: int) -> int:
        return tiny_steps * self.scale

    def fit(self, cfg):
        """cfg with the accumulation (and speech token budget) that fits its update on this GPU
        (`planner.fit_to_gpu`; base on one GPU: micro-batches instead of 2,048 ViT-B images at once);
        unchanged on the CPU."""
        if self.device != "cuda":
            return cfg
        from .planner import fit_to_gpu

        gib = torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
        return fit_to_gpu(cfg, gib, gpus=1, precision="bf16" if torch.cuda.is_bf16_supported() else "fp16")

    def __str__(self) -> str:
        where = "Colab" if self.on_colab else "local"
        return f"profile={self.profile} preset={self.preset} device={self.device} ({where}, torch {torch.__version__})"


def on_colab() -> bool:
    return "google.colab" in sys.modules


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def repo_url() -> str:
    """The repository (pyproject.toml's [project.urls] Repository, see `d2v_mini.links`)."""
    from .links import repository_url

    return repository_url()


def colab_prepare(data_dir: str | None = None, install: bool = True) -> list[str]:
    """Colab: pip-install the missing `COLAB_PACKAGES`, make `data_dir` (default `COLAB_DATA`) the data root
    (unless D2V_DATA is set) and allow downloads (unless D2V_DOWNLOAD is set). Returns what it installed."""
    missing = [req for module, req in COLAB_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing and install:
        print(f"installing {' '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    os.environ.setdefault("D2V_DATA", data_dir or COLAB_DATA)
    os.environ.setdefault("D2V_DOWNLOAD", "always")
    Path(os.environ["D2V_DATA"]).mkdir(parents=True, exist_ok=True)
    return missing


def setup(seed: int = 0, gpu_profile: str = "small") -> Profile:
    """Choose the profile: D2V_PROFILE if set; else tiny on CPU or under CI, `gpu_profile` on a GPU.
    On Colab, first `colab_prepare()`: packages, the data root on the session's disk, downloads on."""
    if on_colab():
        colab_prepare()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = os.environ.get("D2V_PROFILE") or ("tiny" if device == "cpu" or os.environ.get("CI") else gpu_profile)
    if profile not in PROFILES:
        raise ValueError(f"D2V_PROFILE={profile!r}: expected one of {PROFILES}")
    source_data = Path(__file__).resolve().parents[1] / "data"  # a source checkout's data/ (with its README)
    if os.environ.get("D2V_DATA") is None and (source_data / "README.md").exists():
        os.environ["D2V_DATA"] = str(source_data)
    from .data.download import download_allowed, mirror_url

    where = mirror_url() or "their original hosts"
    print(f"data root {os.environ.get('D2V_DATA', './data')}; missing data sets "
          + (f"are downloaded from {where}" if download_allowed() else "are not downloaded (D2V_DOWNLOAD=never)"))
    seed_everything(seed)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    return Profile(profile=profile, preset=profile, device=device, scale=SCALE[profile], on_colab=on_colab(),
                   seed=seed)


def hub_reachable(host: str = "huggingface.co", timeout: float = 3) -> bool:
    """Whether a TCP connection to `host`:443 opens within `timeout` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def released_encoder(modality: str, name: str | None = None):
    """The released data2vec 1.0 base encoder of `modality` as a d2v_mini encoder (eval mode), or None.

    `name`: a hub name or a local directory written by `save_pretrained` (default `RELEASED_BASE[modality]`,
    facebook/data2vec-{audio,vision,text}-base: 400k updates on 16 GPUs). A local directory is always loaded;
    a hub name only when huggingface.co is reachable and not under CI (CI=1, HF_HUB_OFFLINE=1). Otherwise,
    or if loading fails, it prints a one-line note and returns None, so a notebook cell can move on."""
    if modality not in RELEASED_BASE:
        raise ValueError(f"unknown modality {modality!r}: expected one of {sorted(RELEASED_BASE)}")
    name = name or RELEASED_BASE[modality]
    local = Path(name).is_dir()
    if not local and os.environ.get("CI"):
        print(f"note: CI run, so the released {name} is not downloaded.")
        return None
    if not local and (os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or not hub_reachable()):
        print(f"note: offline (huggingface.co not reachable), so the released {name} is not shown; with internet "
              f"access this cell loads it.")
        return None
    try:
        from .hf import load_pretrained

        return load_pretrained(name)
    except (RuntimeError, ImportError, OSError, ValueError) as e:
        print(f"note: could not load the released {name}: {str(e).splitlines()[0][:300]}")
        return None
