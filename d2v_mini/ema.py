"""The EMA teacher.

    teacher <- tau * teacher + (1 - tau) * student        after every optimizer step
    tau     =  linear from tau_0 to tau_e over tau_n updates, then tau_e    (fairseq get_annealed_rate)

The teacher is built as a fresh module plus `load_state_dict` (not `deepcopy`, which fails on
weight-normed convs and FSDP), kept in fp32 whatever the student's precision, never receives gradients
and always runs in eval mode. Parameters in a shared group (`EMAConfig.shared`, e.g. the speech CNN and
conv positions) are not averaged but copied from the student, like fairseq's EMA skip keys.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import EMAConfig
from .encoder import Encoder, build_encoder


def ema_decay(step: int, cfg: EMAConfig) -> float:
    """tau after `step` updates: linear from decay_start to decay_end over anneal_steps, then decay_end."""
    if step >= cfg.anneal_steps:
        return cfg.decay_end
    return cfg.decay_start + (cfg.decay_end - cfg.decay_start) * step / cfg.anneal_steps


class EMATeacher(nn.Module):
    def __init__(self, student: Encoder, cfg: EMAConfig):
        super().__init__()
        self.cfg = cfg
        unknown = set(cfg.shared) - {"front_end", "positional"}
        if unknown:
            raise ValueError(f"EMAConfig.shared may name 'front_end' and 'positional', got {sorted(unknown)}")
        self.model = build_encoder(student.cfg)
        self.model.load_state_dict(student.state_dict())
        self.model.float().requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))  # saved in checkpoints
        self._updates = 0  # its Python mirror: reading the buffer on a GPU would synchronise every step
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_updates", int(module.num_updates)))
        names = [n for n, _ in self.model.named_parameters()]
        self.shared_names = [n for n in names if self.model.group_of(n) in cfg.shared]
        self.averaged_names = [n for n in names if self.model.group_of(n) not in cfg.shared]

    def train(self, mode: bool = True):  # the teacher never leaves eval mode (no dropout, no layer drop)
        return super().train(False)

    @property
    def decay(self) -> float:
        return ema_decay(self._updates, self.cfg)

    @torch.no_grad()
    def step(self, student: Encoder) -> float:
        """One EMA update from the student (call after `optimizer.step()`). Returns the tau used."""
        tau = self.decay
        if getattr(self, "_pairs", None) is None or self._pairs[0] is not student:  # built once per student
            s, t = dict(student.named_parameters()), dict(self.model.named_parameters())
            pair = lambda names: ([t[n] for n in names], [s[n] for n in names])  # noqa: E731
            self._pairs = (student, pair(self.shared_names), pair(self.averaged_names))
        _, (t_shared, s_shared), (t_avg, s_avg) = self._pairs
        if t_shared:
            torch._foreach_copy_(t_shared, s_shared)  # copy_ casts to the teacher's fp32
        if tau < 1.0 and t_avg:  # tau_e = 1 freezes the teacher
            torch._foreach_lerp_(t_avg, [p.float() for p in s_avg], 1.0 - tau)
        self._updates += 1
        self.num_updates.fill_(self._updates)
        return tau

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)
