"""Independent random streams: one seed per purpose (and per task), all derived from the run's `seed`.

A run draws random numbers for several unrelated purposes: the model's initial weights, the order of the
training batches, each permuted task's pixel permutation, each task's validation hold-out, EWC's Fisher
sample, the replay buffer and a stream's parts. Giving each purpose its own stream, derived with numpy's `SeedSequence`
(entropy = the run's seed, spawn key = the purpose and the task), keeps them independent of each other:
no two purposes, and no two tasks of one purpose, ever share a seed.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """What a random stream is used for (the values are part of every seed: never renumber them)."""

    init = 1  # the model's initial weights
    shuffle = 2  # the order of the training batches
    permutation = 3  # a permuted task's pixel permutation (per task)
    validation = 4  # a task's validation hold-out (per task)
    fisher = 5  # EWC's Fisher sample (per task)
    replay = 6  # the replay buffer's reservoir and draws
    stream_parts = 7  # how a stream's training set is dealt into its parts
    mesu_test = 8  # MESU's fixed weight samples for testing


def derive(seed: int, stream: Stream, *index: int) -> int:
    """The 63-bit seed of `stream` (for task `index`, where per task) in the run seeded with `seed`."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(int(stream), *index)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(seed: int, stream: Stream, *index: int) -> torch.Generator:
    """A CPU torch.Generator seeded for `stream` (see `derive`)."""
    return torch.Generator().manual_seed(derive(seed, stream, *index))
