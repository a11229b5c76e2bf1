"""Class-balanced sampling for `--balance` (the BalanceClassSampler idea), sharded for DDP.

Each epoch draws one balanced sequence of indices with replacement, every index with probability proportional to
1 / (size of its class), so every class is drawn equally often in expectation. The draw is seeded by
(seed, epoch) only, so every rank computes the same one without communication; rank r takes positions
r, r + W, r + 2W, ... of it. The shards are disjoint pieces of one draw and equally long on every rank (DDP
needs the same number of steps everywhere). Keys are `(index, epoch)`, as the shuffling sampler yields, so
augmentation stays a pure function of (seed, epoch, index).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

BALANCE_STREAM = 0x62616C  # "bal": keeps this stream apart from the per-item augmentation seeds


def balanced_weights(labels: Sequence[int]) -> np.ndarray:
    """Probability of each index in a class-balanced draw: 1 / (number of classes * size of its class)."""
    counts = Counter(int(label) for label in labels)
    weights = np.array([1.0 / counts[int(label)] for label in labels], dtype=np.float64)
    return weights / weights.sum()


def occurrence_numbers(indices: np.ndarray) -> np.ndarray:
    """For each position, how many times its index occurred before it in the draw (0 for the first copy)."""
    order = np.argsort(indices, kind="stable")
    sorted_indices = indices[order]
    starts = np.flatnonzero(np.r_[True, sorted_indices[1:] != sorted_indices[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(indices)]))
    numbers = np.empty(len(indices), dtype=np.int64)
    numbers[order] = np.arange(len(indices)) - run_start
    return numbers


class ClassBalancedDistributedSampler(Sampler[tuple[int, int]]):
    """Yields this rank's `(index, epoch)` keys of one class-balanced draw per epoch; call `set_epoch` each epoch.

    `num_samples` (per epoch, all ranks together) defaults to the data set size, rounded up to a multiple of
    the world size so every rank gets `ceil(len / world)` keys.
    """

    def __init__(self, labels: Sequence[int], *, num_replicas: int, rank: int, seed: int = 0,
                 num_samples: int | None = None) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        if len(labels) == 0:
            raise ValueError("cannot balance an empty data set")
        self.weights = balanced_weights(labels)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        total = len(labels) if num_samples is None else num_samples
        self.num_samples = math.ceil(total / num_replicas)  # per rank
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, epoch: int) -> np.ndarray:
        """The whole balanced draw of an epoch (identical on every rank)."""
        rng = np.random.default_rng([BALANCE_STREAM, self.seed, epoch])
        return rng.choice(len(self.weights), size=self.total_size, replace=True, p=self.weights)

    skip = 0  # keys left out of the next iteration only: a run resumed in the middle of an epoch

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, skip, self.skip = self.epoch, self.skip, 0
        indices = self.draw(epoch)
        copies = occurrence_numbers(indices)
        keep = slice(self.rank + skip * self.num_replicas, None, self.num_replicas)
        return ((int(index), epoch, int(copy)) for index, copy in zip(indices[keep], copies[keep]))

    def __len__(self) -> int:
        return self.num_samples
