"""Batching by total samples (fairseq `max_tokens`): the sampler's budget, coverage, determinism,
sharding and resume; the speech data sets' header sizes; a trainer run that resumes bit-exactly;
what one update of the speech presets holds. Runtime ~10 s.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from d2v_mini.batching import (TokenBatchSampler, check_token_update, collate_limits, dataset_sizes,
                               describe_update, update_samples)
from d2v_mini.config import override
from d2v_mini.data import FSDD, AudioCollator
from d2v_mini.distributed import DistInfo
from d2v_mini.pipeline import SourceOnly
from d2v_mini.presets import preset
from d2v_mini.train import TrainOptions, pretrain

RATE = 16_000


def speech_like_sizes(n: int, seed: int = 0) -> np.ndarray:
    """n clip lengths in samples, 0.5-35 s, LibriSpeech-like (most 10-17 s), some below the 2 s minimum."""
    g = np.random.default_rng(seed)
    return (np.clip(g.normal(13.0, 5.0, n), 0.5, 35.0) * RATE).astype(np.int64)


def sampler(sizes, world=1, rank=0, **kw) -> TokenBatchSampler:
    kw = {"max_tokens": 1_200_000, "max_size": 320_000, "min_size": 32_000, "group": world, "seed": 3, **kw}
    return TokenBatchSampler(sizes, info=DistInfo(rank=rank, world_size=world), **kw)


# --------------------------------------------------------------------------------------- sampler
def test_batches_stay_within_the_budget_and_take_each_clip_at_most_once():
    """Every batch: clips x longest cropped clip <= max_tokens, so after the crop to the shortest clip
    it holds at most max_tokens samples; no clip twice in an epoch, none under min_size; the batches
    are fairseq's greedy ones (sorted by size: each is as large as the budget allows), so together they
    fill most of the budget; only the tail that does not make a whole update is left out."""
    sizes = speech_like_sizes(1000)
    s = sampler(sizes, group=4)
    batches = s.global_batches()
    crop = np.minimum(sizes, 320_000)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and all(sizes[i] >= 32_000 for i in flat)
    kept = np.flatnonzero(sizes >= 32_000)
    assert 0 < len(kept) - len(flat) < 4 * max(len(b) for b in batches)  # < one update of clips left out
    assert len(batches) % 4 == 0 and len(s) == len(batches)
    for b in batches:
        longest = crop[b].max()
        assert len(b) * longest <= 1_200_000                            # the budget, as fairseq counts it
        assert len(b) * crop[b].min() <= 1_200_000                      # what the collator keeps
    short = [b for b in batches if len(b) != 1_200_000 // crop[b].max()]  # greedy: as many as fit ...
    assert len(short) <= 1  # ... except the last batch of the sorted order, if it was kept
    fill = sum(len(b) * crop[b].min() for b in batches) / (len(batches) * 1_200_000)
    assert fill > 0.85, fill  # 0.88: with 3-4 clips of 20 s per batch the last one often does not fit
    assert len({len(b) for b in batches}) > 3  # batch sizes follow the clip lengths: 3 to 37 clips here


def test_same_seed_and_epoch_same_batches_other_epochs_and_seeds_differ():
    sizes = speech_like_sizes(600)
    a, b = sampler(sizes), sampler(sizes)
    assert a.global_batches(0) == b.global_batches(0)
    a.set_epoch(1)
    assert list(a) == b.global_batches(1) != b.global_batches(0)
    assert sampler(sizes, seed=4).global_batches(0) != b.global_batches(0)
    # a new epoch redraws the tie-break among equal sizes (the many clips cropped to 20 s), not just the order
    sets = [{frozenset(x) for x in b.global_batches(e)} for e in (0, 1)]
    assert sets[0] != sets[1]
    assert sorted(len(x) for x in sets[0]) == sorted(len(x) for x in sets[1])


def test_two_ranks_share_out_the_single_process_updates():
    """2 ranks x 1 batch per update == 1 rank x 2 accumulated batches: the same global batches per update."""
    sizes = speech_like_sizes(700)
    one = sampler(sizes, world=1, group=2)
    two = [sampler(sizes, world=2, rank=r, group=2) for r in (0, 1)]
    for epoch in (0, 1):
        for s in [one, *two]:
            s.set_epoch(epoch)
        full, shards = list(one), [list(s) for s in two]
        assert len(shards[0]) == len(shards[1]) == len(full) // 2 == len(two[0])
        for k in range(len(full) // 2):
            assert sorted(full[2 * k] + full[2 * k + 1]) == sorted(shards[0][k] + shards[1][k])
            assert shards[0][k] != shards[1][k]


def test_skip_resumes_mid_epoch_once():
    sizes = speech_like_sizes(500)
    s = sampler(sizes, world=2, rank=1, group=2)
    s.set_epoch(2)
    full = list(s)
    s.skip = 5
    assert list(s) == full[5:] and list(s) == full


def test_clear_errors():
    with pytest.raises(ValueError, match="more than max_tokens = 100,000. Raise max_tokens or crop shorter"):
        sampler([50_000, 200_000], max_tokens=100_000)
    with pytest.raises(ValueError, match="multiple of the world size 2"):
        sampler([50_000] * 8, world=2, group=3)
    with pytest.raises(TypeError, match="has no `sizes`"):
        dataset_sizes([{"source": torch.zeros(10)}])
    with pytest.raises(ValueError, match=r"set accum_steps = 16 \(CLI: --accum-steps 16\) to get the preset's update"):
        check_token_update(16, 1, 1)
    with pytest.raises(ValueError, match="use a number of GPUs that divides 16"):
        check_token_update(16, 1, 3)
    check_token_update(16, 2, 8)


# ----------------------------------------------------------------------------------- data sets
def test_speech_sizes_come_from_the_headers_and_match_the_decoded_clips():
    """FSDD is 8 kHz on disk: its sizes at 16 kHz are those of the resampled waves; a Subset keeps its
    items' sizes; the pretraining collator's crop and minimum are found through SourceOnly."""
    ds = FSDD("train")
    sizes = dataset_sizes(ds)
    assert sizes.shape == (2700,)
    for i in (0, 17, 1234, 2699):
        assert sizes[i] == len(ds[i]["source"])
    assert list(dataset_sizes(Subset(ds, [5, 3]))) == [sizes[5], sizes[3]]
    assert collate_limits(SourceOnly(AudioCollator(max_samples=16_000, min_samples=400))) == (400, 16_000)
    assert collate_limits(None) == (0, 0)


# ------------------------------------------------------------------------------------ trainer
class Clips(torch.utils.data.Dataset):
    """n noisy harmonic clips of 0.3-1.5 s at 16 kHz; `sizes` as a speech data set gives them."""

    def __init__(self, n: int = 40, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.waves = []
        for _ in range(n):
            size = int(torch.randint(5_000, 24_000, (), generator=g))
            t = torch.arange(size) / RATE
            f = 150 + 300 * torch.rand((), generator=g)
            self.waves.append(torch.sin(2 * torch.pi * f * t) + 0.3 * torch.randn(size, generator=g))
        self.sizes = [len(w) for w in self.waves]

    def __len__(self):
        return len(self.waves)

    def __getitem__(self, i):
        return {"source": self.waves[i]}


class Recorder:
    """The pretraining collate_fn, keeping the shape of every batch it made."""

    def __init__(self):
        self.collate_fn = SourceOnly(AudioCollator(max_samples=16_000, min_samples=400))
        self.shapes = []

    def __call__(self, items):
        batch = self.collate_fn(items)
        self.shapes.append(tuple(batch["source"].shape))
        return batch


def speech_cfg(**changes):
    base = {"encoder.dim": 32, "encoder.heads": 2, "encoder.ffn_dim": 64, "encoder.depth": 2, "targets.top_k": 2,
            "optim.total_steps": 20, "optim.warmup_steps": 4, "optim.lr": 2e-3, "ema.anneal_steps": 10,
            "optim.batch_size": 2, "optim.accum_steps": 2, "optim.max_tokens": 64_000, "crop": 16_000}
    return override(preset("speech", "tiny"), **{**base, **changes})


@pytest.fixture
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_trainer_batches_by_samples_and_resumes_exactly(tmp_path, _one_thread):
    """max_tokens 64,000: micro-batches of 4 to 6 clips here (not a fixed count), each <= 64,000 samples;
    8 steps straight == 4 steps, stop, resume to 8 (the 32 clips make 3 updates of 2 batches per epoch,
    so the stop is one batch pair into the second epoch)."""
    cfg, data = speech_cfg(), Clips(32)
    updates = len(TokenBatchSampler(data.sizes, 64_000, max_size=16_000, min_size=400, group=2)) // 2
    assert updates == 3
    opts = lambda name, **kw: TrainOptions(out_dir=str(tmp_path / name), device="cpu", progress=False,  # noqa: E731
                                           log_every=1, **kw)
    rec = Recorder()
    straight = pretrain(cfg, data, rec, opts("straight", steps=8))
    assert len(rec.shapes) == 16  # 2 micro-batches per step
    assert all(b * n <= 64_000 for b, n in rec.shapes)
    assert len({b for b, _ in rec.shapes}) > 1  # the clip count follows the clip lengths
    assert sum(b * n for b, n in rec.shapes) / len(rec.shapes) > 0.75 * 64_000

    first = pretrain(cfg, data, Recorder(), opts("resumed", steps=4))
    ck = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert (ck["state"]["epoch"], ck["state"]["sample"]) == (1, 2)  # inside an epoch, counted in batches
    second = pretrain(cfg, data, Recorder(), opts("resumed", steps=8, resume=True))
    losses = [h["loss"] for h in straight.history]
    assert len(set(losses)) == 8
    assert [h["loss"] for h in first.history + second.history] == losses
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resume"
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert saved["optim"]["max_tokens"] == 64_000


def test_trainer_explains_a_split_that_misses_the_update(tmp_path):
    with pytest.raises(ValueError, match="set accum_steps = 2"):
        pretrain(speech_cfg(**{"optim.accum_steps": 1}), Clips(8), Recorder(),
                 TrainOptions(out_dir=str(tmp_path), device="cpu", progress=False, steps=1))
    with pytest.raises(ValueError, match="fewer than one update"):
        pretrain(speech_cfg(**{"optim.max_tokens": 1_000_000}), Clips(8), Recorder(),
                 TrainOptions(out_dir=str(tmp_path), device="cpu", progress=False, steps=1))


def test_cli_pretrains_speech_by_samples_on_fsdd(tmp_path, _one_thread):
    """The speech tiny preset on 32 FSDD clips, batched by samples from the command line."""
    from d2v_mini.__main__ import main

    out = tmp_path / "run"
    main(["pretrain", "--modality", "speech", "--preset", "tiny", "--steps", "2", "--out", str(out), "--limit", "32",
          "--max-tokens", "48000", "--batch-size", "2", "--accum-steps", "2", "--log-every", "1", "--no-progress"])
    cfg = json.loads((out / "config.json").read_text())["optim"]
    assert (cfg["max_tokens"], cfg["batch_size"], cfg["accum_steps"]) == (48_000, 2, 2)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and all(np.isfinite(r["loss"]) for r in lines)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["state"]["sample"] == 4  # 2 steps x 2 batches: the position is counted in batches


# ------------------------------------------------------------------------------------ presets
def test_speech_base_update_is_fairseqs_16_gpus_x_3_8m_samples():
    """From the preset: 16 GPUs x accum_steps 1 (or 1 GPU x 16) x max_tokens = 60.8M samples, 63 min of
    audio; the batches of one update, on LibriSpeech-like clip lengths through the preset's crop and the
    recipe's 2 s minimum, hold at most that and most of it."""
    cfg = preset("speech", "base")
    o = cfg.optim
    gpus = 16
    accum = o.batch_size // gpus
    check_token_update(o.batch_size, accum, gpus)       # the preset's update on 16 GPUs without accumulation
    check_token_update(o.batch_size, o.batch_size, 1)   # ... and on one GPU with accum_steps 16
    total = gpus * accum * o.max_tokens
    assert total == update_samples(o) == 60_800_000
    assert total / cfg.encoder.sample_rate / 60 == pytest.approx(63.3, abs=0.05)
    assert describe_update(cfg) == "16 x 3.8M samples = 60.8M (63.3 min)"

    sizes = speech_like_sizes(20_000)
    shards = [TokenBatchSampler(sizes, o.max_tokens, max_size=cfg.crop, min_size=32_000,
                                info=DistInfo(rank=r, world_size=gpus), group=gpus * accum) for r in range(gpus)]
    crop = np.minimum(sizes, cfg.crop)
    for k in range(3):  # the first updates: one batch per GPU
        held = sum(len(b) * crop[b].min() for b in (list(s)[k] for s in shards))
        assert 0.9 * total < held <= total


def test_small_speech_presets_batch_by_clip_count():
    for name, clips, seconds in (("tiny", 16, 2), ("small", 32, 5)):
        cfg = preset("speech", name)
        assert cfg.optim.max_tokens == 0 and cfg.optim.batch_size == clips
        assert describe_update(cfg).startswith(f"{clips} clips <= {seconds} s")
