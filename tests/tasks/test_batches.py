"""Micro-batches: seeded epoch permutations, seeds derived per purpose / step / rank, and the
split of each global batch across processes."""

import pytest
import torch

from tasks.batches import MicroBatches, batch_indices, derived_seed
from tasks.distributed import Processes
from tasks.engine import TrainConfig


def test_batches_are_seeded_epoch_permutations():
    epoch = [i for step in range(4) for i in batch_indices(step, 35, 8, seed=1)]
    assert len(set(epoch)) == 32 and max(epoch) < 35  # last partial batch dropped
    assert batch_indices(4, 35, 8, seed=1) != batch_indices(0, 35, 8, seed=1)  # a new permutation
    assert batch_indices(2, 35, 8, seed=1) == batch_indices(2, 35, 8, seed=1)
    with pytest.raises(ValueError, match="batch_size: expected at most the 5 training examples, got 8"):
        batch_indices(0, 5, 8, seed=0)


def test_derived_seeds_differ_by_every_part_and_fit_a_generator():
    seeds = {derived_seed(seed, purpose, step, rank) for seed in (0, 1) for purpose in ("batch", "dropout")
             for step in range(50) for rank in range(4)}
    assert len(seeds) == 2 * 2 * 50 * 4 and all(0 <= s < 2**63 for s in seeds)
    assert derived_seed(0, "batch", 3, 1) == derived_seed(0, "batch", 3, 1)
    torch.Generator().manual_seed(max(seeds))


class Echo:
    def num_train_examples(self):
        return 40

    def train_batch(self, indices, generator):
        return indices, torch.rand(1, generator=generator).item()


def test_processes_split_each_global_batch_into_disjoint_slices():
    config = TrainConfig(batch_size=8, seed=3)
    one = MicroBatches(Echo(), config, 0, 10, Processes())
    ranks = [MicroBatches(Echo(), config, 0, 10, Processes(rank=r, world_size=2)) for r in range(2)]
    for i in range(10):
        (whole, _), (first, draw0), (second, draw1) = one[i], ranks[0][i], ranks[1][i]
        assert first + second == whole and len(first) == 4
        assert draw0 != draw1  # each rank's random draws are its own
    with pytest.raises(ValueError, match="batch_size: expected a multiple of the 3 processes, got 8"):
        MicroBatches(Echo(), config, 0, 1, Processes(rank=0, world_size=3))[0]
