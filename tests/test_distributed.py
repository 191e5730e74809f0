"""DDP: two CPU processes (gloo, launched by torchrun) train exactly like one process on the same
global batch, keep identical EMA teachers, and survive layer drop; the per-rank data shards.

Runtime ~20 s (most of it starting the two torchrun workers).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d2v_mini.data2vec import Data2Vec
from d2v_mini.distributed import DistInfo, ShardSampler, init_distributed
from d2v_mini.train import TrainOptions, pretrain
from tests.ddp_worker import DDP_STEPS, ddp_cfg, layerdrop_cfg, synthetic_images, tiny_cfg, token_cfg, token_data

WORKER = Path(__file__).with_name("ddp_worker.py")
TIMEOUT = 240


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # like the torchrun workers (OMP_NUM_THREADS=1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:  # a hung collective: SIGTERM makes torchrun end its workers
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}"
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return out, ranks


def test_two_processes_equal_one_process_on_the_same_global_batch(ddp_run, tmp_path):
    """Global batch 8: 2 ranks x 2 accumulated micro-batches of 2 vs 1 process x 1 batch of 8, with
    precomputed masks of 8..40 patches per image, so each rank holds a different number of masked
    positions and only the global sum / count normalisation makes the two runs agree."""
    out, (r0, r1) = ddp_run
    single = pretrain(tiny_cfg(), synthetic_images(masks=True),
                      opts=TrainOptions(steps=DDP_STEPS, out_dir=str(tmp_path), device="cpu", log_every=1,
                                        progress=False))
    assert ddp_cfg().optim.batch_size == tiny_cfg().optim.batch_size == 8
    ddp_losses = [h["loss"] for h in r0["history"]]
    assert len(ddp_losses) == DDP_STEPS and len(set(ddp_losses)) == DDP_STEPS
    torch.testing.assert_close(ddp_losses, [h["loss"] for h in single.history], rtol=1e-5, atol=0)
    no_time = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in (r0, r1)]
    assert no_time[0] == no_time[1]  # statistics are all-reduced: every rank logs the same
    ref = single.model.state_dict()
    assert set(ref) == set(r0["model"])
    for k, v in ref.items():  # student, head and teacher (num_updates included)
        torch.testing.assert_close(r0["model"][k], v, rtol=0, atol=1e-5, msg=k)
    assert int(r0["model"]["teacher.num_updates"]) == DDP_STEPS
    lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == DDP_STEPS  # written by rank 0 only


def test_token_batches_on_two_ranks_equal_one_process_with_accumulation(ddp_run, tmp_path):
    """cfg.optim.max_tokens: 2 ranks x 1 batch per update == 1 process x 2 accumulated batches, with
    batches of 2 to 8 images (sizes 1-4, budget 8), so the ranks' batches differ in size and masked count."""
    _, (r0, r1) = ddp_run
    single = pretrain(token_cfg(accum_steps=2), token_data(),
                      opts=TrainOptions(steps=DDP_STEPS, out_dir=str(tmp_path), device="cpu", log_every=1,
                                        progress=False))
    losses = [h["loss"] for h in r0["token_history"]]
    assert len(set(losses)) == DDP_STEPS
    torch.testing.assert_close(losses, [h["loss"] for h in single.history], rtol=1e-5, atol=0)
    assert [h["loss"] for h in r1["token_history"]] == losses
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0["token_model"][k], v, rtol=0, atol=1e-5, msg=k)


def test_ema_teacher_identical_on_every_rank(ddp_run):
    _, (r0, r1) = ddp_run
    for key in ("model", "layerdrop_teacher", "layerdrop_student"):
        for k, v in r0[key].items():
            assert torch.equal(v, r1[key][k]), f"{key}.{k} differs between ranks"


def test_resume_under_ddp_is_exact(ddp_run):
    """5 steps straight == 2 steps + resume to 5 with 2 ranks: every rank's mask generator, data
    position and the shared optimizer state come back from the one checkpoint rank 0 wrote."""
    _, ranks = ddp_run
    for r in ranks:
        assert len(set(r["straight"])) == 5 and r["resumed"] == r["straight"]
        assert all(torch.equal(v, r["resumed_model"][k]) for k, v in r["straight_model"].items())


def test_layerdrop_run_trains_under_ddp(ddp_run):
    """Layer drop 0.3 skips different blocks on each rank (find_unused_parameters), yet every block
    was trained: its weights left their initial values (with these seeds; a block skipped on every
    rank at every step would stay put, and did with layer drop 0.5 over 4 steps)."""
    _, (r0, _) = ddp_run
    torch.manual_seed(0)  # pretrain builds its model after manual_seed(seed=0)
    init = Data2Vec(layerdrop_cfg()).student.state_dict()
    trained = r0["layerdrop_student"]
    for i in range(4):
        k = f"transformer.blocks.{i}.fc1.weight"
        assert not torch.equal(trained[k], init[k]), f"block {i} never trained"


def test_shards_make_up_the_single_process_batches():
    """Rank r takes every W-th index of the same seeded permutation, so the union of the ranks'
    b-th micro-batches is the single process's b-th batch; `skip` resumes inside an epoch."""
    data = list(range(37))
    one = ShardSampler(data, DistInfo(), seed=3)
    two = [ShardSampler(data, DistInfo(rank=r, world_size=2), seed=3) for r in (0, 1)]
    for epoch in (0, 1):
        for s in [one, *two]:
            s.set_epoch(epoch)
        full, shards = list(one), [list(s) for s in two]
        for b in range(len(data) // 8):
            assert sorted(full[8 * b:8 * b + 8]) == sorted(shards[0][4 * b:4 * b + 4] + shards[1][4 * b:4 * b + 4])
    assert list(ShardSampler(data, DistInfo(), seed=3)) != full  # epochs differ
    one.skip = 5
    assert list(one) == full[5:] and list(one) == full  # skip applies once


def test_world_size_without_torchrun_variables_is_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="launch with `torchrun --nproc_per_node=2"):
        init_distributed("cpu")
