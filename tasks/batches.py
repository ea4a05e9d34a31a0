"""What each micro-batch of a run holds: data order and random draws as pure functions of the
seed, the micro-step and the process's rank, so that workers may build batches in any order, a
resumed run sees the batches an uninterrupted one would, and N processes split the batches one
process would see."""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING

import torch

from tasks.stopping import ignore_stop_signals

if TYPE_CHECKING:
    from tasks.distributed import Processes
    from tasks.engine import Task, TrainConfig


def batch_indices(micro_step: int, num_examples: int, batch_size: int, seed: int) -> list[int]:
    """Examples of micro-batch ``micro_step``: epochs of seeded permutations, last partial batch
    of each epoch dropped."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size: expected at most the {num_examples} training examples, "
                         f"got {batch_size}")
    epoch, position = divmod(micro_step, per_epoch)
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def derived_seed(*parts) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (the run's seed, a purpose, a micro-step,
    a rank), the same in every process and on every machine."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch ``i`` of a run from ``start``, this process's slice of it: its examples and its
    random draws (masks, query subsets) are pure functions of the seed, the micro-step and the
    rank, so workers may build them in any order and a resumed run sees the batches an
    uninterrupted one would."""

    def __init__(self, task: Task, config: TrainConfig, start: int, stop: int, procs: Processes):
        self.task, self.config, self.start, self.stop = task, config, start, stop
        self.num_examples, self.procs = task.num_train_examples(), procs

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        micro = self.start + i
        indices = batch_indices(micro, self.num_examples, self.config.batch_size, self.config.seed)
        seed = derived_seed(self.config.seed, "batch", micro, self.procs.rank)
        generator = torch.Generator().manual_seed(seed)
        return self.task.train_batch(self.procs.shard(indices), generator)


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@contextlib.contextmanager
def batch_stream(micro_batches: MicroBatches, num_workers: int, seed: int, device: torch.device):
    """An iterator over ``micro_batches`` built by ``num_workers`` processes (0: in this one), whose
    workers are stopped however the loop ends. They ignore SIGTERM (``ignore_stop_signals``), so
    multiprocessing's exit-time ``terminate()`` cannot end them: left to interpreter exit after an
    exception, the process would wait on them forever."""
    loader = torch.utils.data.DataLoader(
        micro_batches, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(seed))  # leaves the global RNG alone
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent without workers
        if shutdown is not None:
            shutdown()
