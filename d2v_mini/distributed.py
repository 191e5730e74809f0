"""Multi-process training helpers (torchrun + DistributedDataParallel).

    torchrun --nproc_per_node=2 -m d2v_mini pretrain ...      # sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*

`init_distributed` starts the process group from those variables (NCCL on CUDA, gloo on CPU) and picks
this rank's device; a plain `python` run is world size 1 and touches nothing. The group, once started,
stays up for later calls in the same process (a second `pretrain`, an evaluation) and ends at exit:
re-initialising a destroyed group under torchrun hangs. `ShardSampler` is the
one sampler of the trainer, for any world size: the same seeded permutation of the data set per epoch,
cut into per-rank shards (DistributedSampler), so the global batch of step k holds the same samples
with 1 or N processes, and a resumed run can skip what the interrupted epoch already consumed.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created: bool = False  # True if this call started the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1), or reuse one that
    is already initialised. device: "auto" (cuda if available), "cpu", "cuda" or "cuda:N"; under DDP
    with CUDA each rank uses cuda:LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not dist.is_initialized():
        for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: launch with "
                                   f"`torchrun --nproc_per_node={world} ...`, which sets RANK, LOCAL_RANK, "
                                   f"MASTER_ADDR and MASTER_PORT")
        local = int(os.environ["LOCAL_RANK"])
        if dev.type == "cuda":
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
        atexit.register(cleanup)
        created = True
    if not dist.is_initialized():
        return DistInfo(device=dev)
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, created)


def cleanup() -> None:
    """End the process group (registered with atexit by `init_distributed`)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks in place (a no-op for world size 1) and return it."""
    if info.world_size > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op for world size 1)."""
    if info.world_size > 1:
        dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled; for small things like RNG states)."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class ShardSampler(DistributedSampler):
    """DistributedSampler (seeded permutation per epoch via `set_epoch`, rank r takes every W-th index,
    the tail that does not fill all ranks dropped) that can start `skip` samples into its shard, to
    resume an epoch where a checkpoint left it. `skip` applies to the next iteration only."""

    def __init__(self, dataset, info: DistInfo, seed: int):
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())[self.skip:]
        self.skip = 0
        return iter(indices)
