"""Skipping unreadable data files, when the user asks for it (`pretrain --skip-bad-files`).

    data = SkipBadItems(FSDD("train"))     # an item whose file cannot be decoded -> the next readable one
    ...; data.skipped, data.bad            # how many were replaced, and why (index -> message)

By default a loader raises DataFileError naming the bad file; this wrapper is the opt-in. The
replacement keeps batch sizes and the data order deterministic (the same bad item is always replaced
by the same good one). Counts are per process: with DataLoader workers, each worker has its own.
"""
from __future__ import annotations

import warnings

from torch.utils.data import Dataset

from ..errors import DataFileError


class SkipBadItems(Dataset):
    """Wrap a data set: an item that raises DataFileError is replaced by the next readable item (a
    warning names the file once). Raises DataFileError if more than `max_fraction` of the items
    (at least one) turned out bad, or if no item can be read."""

    def __init__(self, dataset: Dataset, max_fraction: float = 0.1):
        self.dataset, self.max_fraction = dataset, max_fraction
        self.bad: dict[int, str] = {}  # index -> the error message

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def sizes(self):
        """The wrapped data set's samples per item (for token batching, batching.dataset_sizes), or None
        if it has none. A replaced item is batched with the bad item's planned size."""
        from ..batching import dataset_sizes

        try:
            return dataset_sizes(self.dataset)
        except TypeError:
            return None

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def __getitem__(self, i: int):
        n = len(self.dataset)
        for k in range(n):
            j = (i + k) % n
            if j in self.bad:
                continue
            try:
                return self.dataset[j]
            except DataFileError as e:
                self.bad[j] = str(e)
                warnings.warn(f"skipping item {j}: {e}", stacklevel=2)
                if len(self.bad) > max(1, self.max_fraction * n):
                    raise DataFileError(f"{len(self.bad)} of {n} items are unreadable (more than "
                                        f"{self.max_fraction:.0%}): the data set is damaged; the last: {e}") from None
        raise DataFileError(f"none of the {n} items can be read")
