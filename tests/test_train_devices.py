"""The trainer's GPU-side choices and their fallbacks, on the CPU: DataLoader workers (auto and a dying
worker), fused AdamW (same update), torch.compile "auto". The GPU paths themselves are run by
benchmarks/gpu_check.py on a CUDA machine."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import get_worker_info

from d2v_mini.config import override
from d2v_mini.data2vec import Data2Vec
from d2v_mini.presets import preset
from d2v_mini.schedule import build_optimizer
from d2v_mini.train import COMPILE_MIN_STEPS, TrainOptions, pretrain, resolve_compile, resolve_workers

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_workers_auto_is_main_process_on_cpu_and_several_on_a_gpu():
    assert resolve_workers(None, CPU) == 0
    assert resolve_workers(3, CPU) == 3
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(None, CUDA) == max(0, min(8, cores - 1))
    assert resolve_workers(None, CUDA, world=cores) == 0  # one core per rank: nothing left for workers
    with pytest.raises(ValueError, match="num_workers"):
        resolve_workers(-1, CPU)


def test_compile_auto_only_on_a_gpu_for_long_runs():
    assert resolve_compile("auto", CPU, 10 ** 6) is False
    assert resolve_compile("auto", CUDA, COMPILE_MIN_STEPS - 1) is False
    assert resolve_compile(True, CPU, 1) is True and resolve_compile(False, CUDA, 10 ** 6) is False
    with pytest.raises(ValueError, match="compile"):
        resolve_compile("yes", CPU, 1)


def test_fused_adamw_gives_the_same_update_as_the_default():
    cfg = preset("text", "tiny")
    torch.manual_seed(0)
    a = Data2Vec(cfg)
    b = Data2Vec(cfg)
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(a, cfg.optim)  # CPU parameters: the default kernel
    opt_b = build_optimizer(b, cfg.optim, fused=True)  # fused where this torch supports it, else the default
    assert not opt_a.param_groups[0].get("fused")
    for model, opt in ((a, opt_a), (b, opt_b)):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.ones_like(p) * 0.1
        opt.step()
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert diff < 1e-6


class DiesInWorkers(torch.utils.data.Dataset):
    """Token blocks that kill any DataLoader worker that reads them (as a worker out of shared memory dies)."""

    def __init__(self, n: int, length: int, vocab: int):
        self.x = torch.randint(4, vocab - 1, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if get_worker_info() is not None:
            os._exit(1)
        return {"source": self.x[i]}


def test_dead_workers_fall_back_to_the_main_process(tmp_path, capsys):
    cfg = override(preset("text", "tiny"), **{"optim.batch_size": 4})
    res = pretrain(cfg, DiesInWorkers(16, 16, cfg.encoder.vocab_size), None,
                   TrainOptions(steps=3, out_dir=str(tmp_path), device="cpu", num_workers=1, log_every=1,
                                progress=False))
    assert [h["step"] for h in res.history] == [1, 2, 3]
    assert "loading in the main process" in capsys.readouterr().out
