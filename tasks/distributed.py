"""Training in several processes with PyTorch's own engine (``torchrun``).

``torchrun --nproc-per-node N -m perceiver train ...`` (or several nodes through torchrun's
rendezvous) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``Processes.start`` then joins the
process group (gloo on CPU, NCCL on GPU) and ``wrap`` gives the model its strategy:

- ``ddp``: every process holds the whole model, gradients are averaged (DistributedDataParallel);
- ``fsdp``: parameters, gradients and optimizer state are sharded (FSDP2 ``fully_shard`` on every
  attention layer, then on the whole model), for models that do not fit one device.

``train.batch_size`` is the global batch: each process takes its own slice of every batch, so a
preset trains the same way in one process or in N. Only rank 0 logs and writes; checkpoints are
consolidated (full weights and optimizer state), so one process resumes them or loads them with
``perceiver.from_pretrained``. Without ``WORLD_SIZE`` everything here is the single-process case.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "fsdp")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers (for its config)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@dataclass
class Processes:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    strategy: str = "ddp"
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1 and self.strategy == "fsdp"

    @classmethod
    def start(cls, device: str = "auto", strategy: str = "ddp") -> Processes:
        """This process's place in the run: joins the process group when torchrun started it."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {list(STRATEGIES)}, got {strategy!r}")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
        if world_size == 1:
            chosen = torch.device(("cuda" if cuda else "cpu") if device == "auto" else device)
            return cls(device=chosen, strategy=strategy)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        chosen = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(chosen)
        owns_group = not dist.is_initialized()  # a caller's own process group is left alone
        if owns_group:
            # rank 0 evaluates and writes while the others wait: allow that an hour, not NCCL's 10 min
            dist.init_process_group("nccl" if cuda else "gloo", device_id=chosen if cuda else None,
                                    timeout=datetime.timedelta(hours=1))
        return cls(dist.get_rank(), dist.get_world_size(), chosen, strategy, owns_group)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def shard(self, indices: list[int]) -> list[int]:
        """This process's slice of a global batch."""
        if len(indices) % self.world_size:
            raise ValueError(f"batch_size: expected a multiple of the {self.world_size} processes, "
                             f"got {len(indices)}")
        per = len(indices) // self.world_size
        return indices[self.rank * per:(self.rank + 1) * per]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: ``model`` itself, wrapped in DDP, or sharded in place by FSDP2."""
        if self.world_size == 1:
            return model
        if self.strategy == "ddp":
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.fsdp import fully_shard

        from perceiver.layers import CrossAttentionLayer, SelfAttentionLayer

        for module in model.modules():
            if isinstance(module, (CrossAttentionLayer, SelfAttentionLayer)):
                fully_shard(module)
        return fully_shard(model)

    def reduce(self, values: list[float], op: str = "mean") -> list[float]:
        """``values`` combined over processes (``mean`` or ``max``); unchanged in one process."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            tensor /= self.world_size
        return tensor.tolist()

    def broadcast(self, value):
        """Rank 0's ``value`` (a JSON-like object) on every process."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def full_state(self, model, optimizer, with_optimizer: bool = True) -> tuple[dict | None, dict | None]:
        """Whole weights (only under FSDP; elsewhere the model holds them: None) and the whole
        optimizer state keyed by parameter index, as ``optimizer.state_dict()``, on the CPU. Under
        FSDP this is a collective: every process calls it."""
        if not self.sharded:
            return None, optimizer.state_dict() if with_optimizer else None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        if not with_optimizer:
            return weights, None
        by_name = get_optimizer_state_dict(model, optimizer, options=options)
        if not self.is_main:  # with cpu_offload only rank 0 receives the gathered state
            return None, None
        index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
        state = {index[name]: value for name, value in by_name["state"].items()}
        return weights, {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Set a whole optimizer ``state`` (keyed by parameter index, as ``full_state`` gives it);
        under FSDP every process takes its shards of it."""
        groups = optimizer.state_dict()["param_groups"]
        if not self.sharded:
            optimizer.load_state_dict({"state": state, "param_groups": groups})
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = [name for name, _ in model.named_parameters()]
        by_name = {"state": {names[i]: v for i, v in state.items()},
                   "param_groups": [g | {"params": [names[i] for i in g["params"]]} for g in groups]}
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
