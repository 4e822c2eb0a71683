"""Deterministic, resumable, rank-sharded batches with per-sample seeded augmentation.

Two things make a training run reproducible no matter how it is executed:

* :class:`ResumableBatchSampler` fixes *which* images form each batch: epoch ``e`` uses a
  permutation drawn from ``seed + e``; global batch ``b`` is the ``b``-th slice of it and process
  ``r`` of ``W`` takes the ``r``-th part. One process with batch ``W * B`` therefore sees exactly
  the images that ``W`` processes with batch ``B`` see together, and a resumed run can start at
  batch ``b`` without replaying the earlier ones.
* :class:`SeededSamples` fixes *how* each image is augmented: every sample is loaded under its
  own seed, derived from ``(seed, epoch, index)``, with the caller's random state saved and
  restored around it. Augmentation then depends neither on the number of data-loader workers nor
  on the process it runs in nor on where a run was resumed.

Multi-scale training without padding: given ``sizes``, the sampler also draws one image size per
global batch (from ``(seed, epoch, batch)``, so every process of a batch and a resumed run agree)
and every item of that batch carries it; :class:`SeededSamples` then asks the data set for the
image at that size (:meth:`~detr_tutorial.data.base.DetectionDataset.sized_item`). All images of
a batch have one size, so no image is padded and a model cannot read the image size from the
padding.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["ResumableBatchSampler", "SeededSamples", "sample_seed"]

_MASK63 = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch (SplitMix64-style mixing of the three numbers)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 29
    return x & _MASK63


class ResumableBatchSampler(Sampler):
    """Batches of ``(dataset_index, sample_seed)`` pairs for one process and one epoch
    (``(dataset_index, sample_seed, size)`` triples when ``sizes`` is given).

    Args:
        dataset_len: number of samples.
        batch_size: images per process per batch.
        seed: base seed of the shuffling and of the per-sample seeds.
        rank, world_size: this process and the number of processes (``DistributedSampler``'s role).
        shuffle: draw a new permutation every epoch (else dataset order).
        drop_last: drop the last incomplete global batch (training); ``False`` keeps it and may
            give the last process a shorter (even empty) batch, so use it with one process only.
        sizes: image sizes in pixels to draw one of per global batch (uniformly, seeded by
            ``(seed, epoch, batch)``); ``None``: items carry no size.

    Call :meth:`set_epoch` before iterating, optionally with ``start_batch`` to resume mid-epoch.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        sizes: Optional[Sequence[int]] = None,
    ) -> None:
        if sizes is not None:
            sizes = tuple(sizes)
            if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
                raise ValueError(f"sizes must be a non-empty list of positive ints (pixels), got {sizes!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if drop_last and dataset_len < batch_size * world_size:
            raise ValueError(
                f"the data set has {dataset_len} samples, fewer than one global batch "
                f"({batch_size} x {world_size} processes)"
            )
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.sizes = sizes
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            return self.dataset_len // global_batch
        return -(-self.dataset_len // global_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def batch_size_px(self, batch: int, epoch: Optional[int] = None) -> Optional[int]:
        """The image size of global batch ``batch`` of ``epoch`` (default: the current one)."""
        if self.sizes is None:
            return None
        epoch = self.epoch if epoch is None else epoch
        # a stream of its own: the per-sample seeds use non-negative indices
        return self.sizes[sample_seed(self.seed, epoch, -1 - batch) % len(self.sizes)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = order[b * global_batch : (b + 1) * global_batch]
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            if self.sizes is None:
                yield [(i, sample_seed(self.seed, self.epoch, i)) for i in mine]
            else:
                size = self.batch_size_px(b)
                yield [(i, sample_seed(self.seed, self.epoch, i), size) for i in mine]


class SeededSamples(Dataset):
    """Wrap a data set so that item ``(index, seed)`` is loaded under its own random seed.

    Python's, NumPy's and torch's (CPU) global generators are seeded for the duration of the
    load and restored afterwards, so the caller's random stream is untouched. An item
    ``(index, seed, size)`` loads ``dataset.sized_item(index, size)`` the same way. A plain
    integer index is passed through unchanged (no seeding). Attributes of the wrapped data set
    (``class_names``, ``coco``, ...) are available on the wrapper.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (e.g. during unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item: Any) -> Any:
        if not isinstance(item, tuple):
            return self.dataset[item]
        index, seed, *size = item
        py_state = random.getstate()
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (1 << 32))
            try:
                return self.dataset.sized_item(index, size[0]) if size else self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
