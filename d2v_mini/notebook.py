"""What every notebook's first cell does: detect Colab, pick the device and the profile.

    from d2v_mini.notebook import setup
    P = setup()          # P.device, P.profile ("tiny" on CPU / CI, "small" on a GPU), P.preset, P.scale

The profile can be forced with the environment variable D2V_PROFILE (tiny | small | base): CI and the
committed outputs use `tiny`, which runs each notebook in a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

REPO = "https://github.com/d2v-mini/d2v_mini"  # where Colab installs the package from
PROFILES = ("tiny", "small", "base")
# How much longer than the tiny profile a profile trains (steps) and how much more data it uses.
SCALE = {"tiny": 1, "small": 20, "base": 100}


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

    def __str__(self) -> str:
        where = "Colab" if self.on_colab else "local"
        return f"profile={self.profile} preset={self.preset} device={self.device} ({where}, torch {torch.__version__})"


def on_colab() -> bool:
    return "google.colab" in sys.modules


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0, gpu_profile: str = "small") -> Profile:
    """Choose the profile: D2V_PROFILE if set; else tiny on CPU or under CI, `gpu_profile` on a GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = os.environ.get("D2V_PROFILE") or ("tiny" if device == "cpu" or os.environ.get("CI") else gpu_profile)
    if profile not in PROFILES:
        raise ValueError(f"D2V_PROFILE={profile!r}: expected one of {PROFILES}")
    if os.environ.get("D2V_DATA") is None and not on_colab():
        print("note: D2V_DATA is not set; data sets are read from ./data (see data/README.md)")
    seed_everything(seed)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    return Profile(profile=profile, preset=profile, device=device, scale=SCALE[profile], on_colab=on_colab(),
                   seed=seed)
