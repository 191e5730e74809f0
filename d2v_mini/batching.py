"""Batching by total samples (fairseq's `max_tokens`), the way the released speech recipe batches.

    sampler = TokenBatchSampler(sizes, max_tokens=3_800_000, max_size=320_000, min_size=32_000,
                                info=info, group=16, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn)   # this rank's batches

fairseq (`RawAudioDataset.ordered_indices`, `data_utils.batch_by_size`, `EpochBatchIterator`):
  1. Clips shorter than `min_size` are left out (fairseq drops them from its manifest).
  2. The rest are ordered by cropped size min(size, max_size), longest first, ties in random order.
  3. Greedy batches along that order: a batch grows while (clips x its longest cropped clip) <= max_tokens.
     The collator then crops the batch to its shortest clip (pad=False), so a batch never holds
     more than max_tokens samples.
  4. The batches are shuffled; rank r of W takes batches r, r + W, r + 2W, ...; one update is W ranks
     x update_freq batches. The speech base recipe: 16 GPUs x 1 batch of <= 3.8M samples = 60.8M
     samples (63 min of 16 kHz audio) per update, about 250 LibriSpeech clips.
Here every epoch draws its own tie-break and batch order from (seed, epoch) (fairseq draws the
tie-break once per run and shuffles the batches per epoch); the batches' sizes are the same in every
epoch. The epoch keeps a whole number of updates (`group` = world x accum_steps batches): the global
batches of update k are the same for any split of `group` into ranks x accumulation steps.

In the trainer: cfg.optim.max_tokens > 0 switches to this sampler, and cfg.optim.batch_size then counts
the micro-batches of one update (fairseq: GPUs x update_freq), which must equal world x accum_steps:
with fewer GPUs than the recipe, accum_steps = batch_size / GPUs gives the recipe's update.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler, Subset

from .distributed import DistInfo


class TokenBatchSampler(Sampler):
    """fairseq-style batches of item indices under a budget of samples, sharded over DDP ranks.

    sizes: int [N] samples per item (at the rate the model reads); max_tokens: the budget of one batch
    (clips x longest cropped clip <= max_tokens); max_size: the crop (0 = none); min_size: shorter items
    are left out; group: batches per update (world x accum_steps), the epoch keeps a multiple of it;
    seed: with the epoch (`set_epoch`) it fixes the tie-break and the batch order.
    Iterating yields this rank's batches (lists of indices), starting `skip` batches into its shard
    (to resume; `skip` applies to the next iteration only). len() = this rank's batches per epoch.
    """

    def __init__(self, sizes, max_tokens: int, *, max_size: int = 0, min_size: int = 0,
                 info: DistInfo | None = None, group: int = 1, seed: int = 0):
        info = info or DistInfo()
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        self.max_tokens, self.max_size, self.min_size = int(max_tokens), int(max_size), int(min_size)
        self.rank, self.world, self.group, self.seed = info.rank, info.world_size, int(group), int(seed)
        self.epoch, self.skip = 0, 0
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (samples per batch), got {max_tokens}")
        if self.group < 1 or self.group % self.world:
            raise ValueError(f"group (batches per update = world size x accum_steps) must be a positive multiple "
                             f"of the world size {self.world}, got {group}")
        self.keep = np.flatnonzero(self.sizes >= self.min_size)  # fairseq: min_sample_size filters the manifest
        self.cropped = np.minimum(self.sizes, self.max_size) if self.max_size > 0 else self.sizes
        if len(self.keep) and self.cropped[self.keep].max() > self.max_tokens:
            i = int(self.keep[np.argmax(self.cropped[self.keep])])
            raise ValueError(f"item {i} has {self.cropped[i]:,} samples after the crop of {self.max_size or 'none'}: "
                             f"more than max_tokens = {self.max_tokens:,}. Raise max_tokens or crop shorter "
                             f"(cfg.crop)")
        # the batches' sizes depend only on the sorted sizes, not on the tie-break: count them once
        self._num_batches = len(self._pack(np.sort(self.cropped[self.keep])[::-1]))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _pack(self, sizes_desc: np.ndarray) -> list[slice]:
        """Greedy batches along sizes sorted longest first: [start, start + max_tokens // longest)."""
        out, start, n = [], 0, len(sizes_desc)
        while start < n:
            stop = min(n, start + self.max_tokens // int(sizes_desc[start]))
            out.append(slice(start, stop))
            start = stop
        return out

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's batches for all ranks, in order: update k holds batches [k group, (k+1) group),
        rank r's micro-batch i of it is batch k group + i world + r."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, 0x7B])
        sizes = self.cropped[self.keep]
        order = self.keep[np.lexsort((rng.permutation(len(sizes)), -sizes))]  # longest first, random ties
        batches = [order[s].tolist() for s in self._pack(self.cropped[order])]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches[:len(batches) - len(batches) % self.group]

    def __iter__(self):
        mine = self.global_batches()[self.rank::self.world][self.skip:]
        self.skip = 0
        return iter(mine)

    def __len__(self) -> int:
        return (self._num_batches - self._num_batches % self.group) // self.world


def dataset_sizes(dataset) -> np.ndarray:
    """Samples per item, int [N], from the data set's `sizes` (speech data sets read them from the file
    headers), through `torch.utils.data.Subset`s. Raises TypeError if the data set has none."""
    if isinstance(dataset, Subset):
        return dataset_sizes(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    sizes = getattr(dataset, "sizes", None)
    if sizes is None:
        raise TypeError(f"cfg.optim.max_tokens > 0 batches by total samples and needs the samples of every item "
                        f"without loading it: {type(dataset).__name__} has no `sizes` (int [N]). Give it one "
                        f"(speech data sets read it from the file headers) or set cfg.optim.max_tokens = 0 to "
                        f"batch by clip count")
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.shape != (len(dataset),):
        raise ValueError(f"{type(dataset).__name__}.sizes has shape {sizes.shape}, expected ({len(dataset)},)")
    return sizes


def collate_limits(collate_fn) -> tuple[int, int]:
    """(min_size, max_size) in samples: the `min_samples` / `max_samples` of the `AudioCollator` in
    `collate_fn`, found through wrappers that keep the inner one as `.collate_fn` (pipeline.SourceOnly);
    (0, 0) = no minimum and no crop when there is none."""
    fn, seen = collate_fn, 0
    while fn is not None and seen < 8:
        if hasattr(fn, "max_samples"):
            return int(getattr(fn, "min_samples", 0) or 0), int(fn.max_samples or 0)
        fn, seen = getattr(fn, "collate_fn", None), seen + 1
    return 0, 0


def check_token_update(batch_size: int, accum_steps: int, world: int) -> None:
    """With max_tokens > 0 one update is `batch_size` micro-batches: one per rank and accumulation step."""
    if world * accum_steps != batch_size:
        fix = (f"set accum_steps = {batch_size // world} (CLI: --accum-steps {batch_size // world})"
               if batch_size % world == 0 else f"use a number of GPUs that divides {batch_size}")
        raise ValueError(f"cfg.optim.max_tokens > 0: one update is cfg.optim.batch_size = {batch_size} micro-batches "
                         f"(fairseq: GPUs x update_freq), one per rank and accumulation step, but world size "
                         f"{world} x accum_steps {accum_steps} = {world * accum_steps}: {fix} to get the preset's "
                         f"update, or set batch_size = {world * accum_steps} for a smaller one")


def update_samples(optim) -> int:
    """The most samples one update holds with max_tokens > 0: batch_size micro-batches x max_tokens."""
    if optim.max_tokens <= 0:
        raise ValueError("update_samples needs cfg.optim.max_tokens > 0 (batching by clip count has no sample budget)")
    return optim.batch_size * optim.max_tokens


def describe_update(cfg) -> str:
    """What one optimizer update holds, in words (speech: in samples and minutes of audio), e.g.
    "16 x 3.8M samples = 60.8M (63.3 min)", "16 clips <= 1 s (<= 0.3 min)", "2048 images"."""
    o = cfg.optim
    if cfg.modality == "image":
        return f"{o.batch_size} images"
    if cfg.modality == "text":
        return f"{o.batch_size} blocks x {cfg.crop or 512} tokens"
    rate = cfg.encoder.sample_rate
    if o.max_tokens > 0:
        total = update_samples(o)
        return f"{o.batch_size} x {o.max_tokens / 1e6:g}M samples = {total / 1e6:g}M ({total / rate / 60:.1f} min)"
    crop = cfg.crop or 15 * rate
    return f"{o.batch_size} clips <= {crop / rate:g} s (<= {o.batch_size * crop / rate / 60:.1f} min)"
