"""The Hierarchical Perceiver: per-modality embeddings and position tables, grouped encoder blocks,
a single-group processor, mirrored decoder blocks with U-Net skips, and a reconstruction head
whose queries are the position embeddings (masked auto-encoding).

    inputs {name: [B, M_m, D_m]} -> embed + positions -> group [B, G, P, E]
      -> blocks 0..p-1 (encoders) -> block p (processor, G = 1) -> blocks p+1.. (+ skips)
      -> head: position queries attend to the last latents -> ungroup -> {name: [B, M_m, D_m]}

Called with any subset of its modalities, a model groups what it is given. Parameters follow
DeepMind's HiP (``shared/reference/hip.md``) with one deviation: each modality has its own
position projection, where the official code shares one per slot of the input dict (E^2 more
parameters per extra modality; the sharing depends on the order of a call's dict, which a model
that accepts any subset of modalities should not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from perceiver.checkpoint import PretrainedMixin
from perceiver.config import register
from perceiver.hip.blocks import BlockConfig, HiPBlock
from perceiver.hip.grouping import GroupLayout
from perceiver.inputs.base import check_tensor
from perceiver.layers import CrossAttentionLayer, attend_in_chunks
from perceiver.model import PerceiverOutput

TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated at +-2


def truncated_normal_(tensor: Tensor, fan_in: int) -> Tensor:
    """HiP's initialiser: a normal cut at +-2 sigma whose effective std is ``1/sqrt(fan_in)``."""
    std = math.sqrt(1.0 / fan_in) / TRUNCATED_STD
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


@register("hip")
class HiP(PretrainedMixin, nn.Module):
    """``forward(inputs={name: [B, M, D]})`` -> ``PerceiverOutput(logits={name: [B, M, D]}, latents=
    [B, G, N, C])``: each given modality reconstructed, and the last block's latents. A modality
    of token ids may be given as ``[B, M]`` integers instead of one-hot vectors."""

    @dataclass
    class Config:
        modalities: dict = field(default_factory=dict)  # name -> (length, channels)
        num_groups: tuple = (16, 1, 16)  # per block; the middle block (processor) has 1
        num_latents: tuple = (128, 64, 128)
        channels: tuple = (128, 1024, 128)
        num_self_layers: tuple = (2, 1, 1)
        num_self_heads: tuple = (4, 32, 4)
        embedding_channels: int = 32
        num_position_encoding_channels: int | None = None  # != embedding_channels: project the tables
        processor_latents_train: int | None = None
        processor_latents_eval: int | None = None
        transpose_regroup: bool = False
        dropout: float = 0.0
        drop_path: float = 0.0
        checkpointing: bool = False  # blocks (cross-attention, each self-attention layer), head chunks
        head_chunk_size: int | None = None  # positions per group the head decodes at a time (same outputs)

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        blocks = block_configs(config)
        self.processor = len(blocks) // 2
        e = config.embedding_channels
        sizes = {name: tuple(size) for name, size in config.modalities.items()}
        self.sizes = sizes
        self.embed = nn.ModuleDict({n: nn.Linear(d, e) for n, (_, d) in sizes.items()})
        self.positions = nn.ParameterDict({n: nn.Parameter(torch.empty(m, e)) for n, (m, _) in sizes.items()})
        self.position_projection = None
        if config.num_position_encoding_channels not in (None, e):
            self.position_projection = nn.ModuleDict({n: nn.Linear(e, e, bias=False) for n in sizes})
        self.blocks = nn.ModuleList()
        for i, block in enumerate(blocks):
            skip = blocks[len(blocks) - 1 - i].channels if i > self.processor else None
            self.blocks.append(HiPBlock(block, e if i == 0 else blocks[i - 1].channels, skip,
                                        config.transpose_regroup, config.dropout, config.drop_path,
                                        config.checkpointing))
        last = blocks[-1].channels
        self.head = CrossAttentionLayer(e, last, 1, qk_dim=last, v_dim=last, widening_factor=1,
                                        query_residual=False, activation="relu2")
        chunk = config.head_chunk_size
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"head_chunk_size: expected a positive integer or None, got {chunk!r}")
        self.head_chunk_size = chunk
        self.checkpointing = config.checkpointing  # of the head's chunks; the blocks have their own
        self.unembed = nn.ModuleDict({n: nn.Linear(e, d) for n, (_, d) in sizes.items()})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                truncated_normal_(module.weight, module.in_features)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for table in [*self.positions.values(), *(b.latents for b in self.blocks)]:
            truncated_normal_(table, table.shape[0])
        for linear in self.unembed.values():
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def position_queries(self, name: str) -> Tensor:
        """The (projected) position table of ``name``: its tokens' positions and its MAE queries."""
        table = self.positions[name]
        return table if self.position_projection is None else self.position_projection[name](table)

    def forward(self, inputs: dict[str, Tensor]) -> PerceiverOutput:
        tokens, queries = self.embed_inputs(self.encoded(inputs))
        layout = GroupLayout.plan({n: t.shape[1] for n, t in tokens.items()}, self.config.num_groups[0])
        z, outputs, read_out = layout.group(tokens), [], {}
        for i, block in enumerate(self.blocks):
            skip = outputs[len(self.blocks) - 1 - i] if i > self.processor else None
            if i == self.processor:
                z = self.enter_processor(z, inputs)
            z = block(z, skip)
            outputs.append(z)
            if i == self.processor:
                read_out = self.leave_processor(z, inputs)
        q = layout.group(queries)
        # the position queries [B*G, P, E] attend to their group's latents [B*G, N, C]
        y = attend_in_chunks(self.head, q.flatten(0, 1), z.flatten(0, 1), self.head_chunk_size,
                             self.checkpointing).unflatten(0, q.shape[:2])
        logits = {n: self.unembed[n](v) for n, v in layout.ungroup(y).items()}
        return PerceiverOutput(logits=logits | read_out, latents=z)

    # Hooks for variants that treat some modalities apart (HiPClassBottleneck): which inputs go
    # through the encoder, what joins the latents entering the processor, and what is read out
    # of its output.
    def encoded(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return inputs

    def enter_processor(self, z: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        return z

    def leave_processor(self, z: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def embed_inputs(self, inputs: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if not isinstance(inputs, dict) or not inputs:
            raise ValueError(f"inputs: expected a dict of tensors for modalities among {list(self.sizes)}, "
                             f"got {type(inputs).__name__}")
        tokens, queries = {}, {}
        for name, x in inputs.items():
            if name not in self.sizes:
                raise ValueError(f"inputs: unknown modality {name!r}, expected among {list(self.sizes)}")
            embedded = self.embed_modality(name, x)
            position = self.position_queries(name).to(embedded.dtype)
            tokens[name] = embedded + position
            queries[name] = position.expand(x.shape[0], -1, -1)
        return tokens, queries

    def embed_modality(self, name: str, x: Tensor) -> Tensor:
        """``[B, M, D]`` values, or ``[B, M]`` integer ids in ``[0, D)`` (the same as their one-hot
        vectors, without building them) -> ``[B, M, E]``."""
        length, channels = self.sizes[name]
        linear = self.embed[name]
        if isinstance(x, Tensor) and not x.dtype.is_floating_point and x.dim() == 2 and x.shape[1] == length:
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= channels):
                raise ValueError(f"inputs[{name!r}]: expected ids in [0, {channels}), got "
                                 f"[{int(x.min())}, {int(x.max())}]")
            return nn.functional.embedding(x, linear.weight.T) + linear.bias
        if not isinstance(x, Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != (length, channels):
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"inputs[{name!r}]: expected shape [B, {length}, {channels}] (or ids "
                             f"[B, {length}]), got {shape}")
        check_tensor(f"inputs[{name!r}]", x, 3, floating=True)
        return linear(x.to(linear.weight.dtype))


def block_configs(config: HiP.Config) -> list[BlockConfig]:
    columns = (config.num_groups, config.num_latents, config.channels, config.num_self_layers,
               config.num_self_heads)
    if len({len(c) for c in columns}) != 1 or len(columns[0]) % 2 == 0:
        raise ValueError(f"blocks: expected per-block tuples of one odd length, got lengths "
                         f"{[len(c) for c in columns]}")
    processor = len(columns[0]) // 2
    if config.num_groups[processor] != 1:
        raise ValueError(f"num_groups: expected 1 group in the processor (block {processor}), got "
                         f"{config.num_groups[processor]}")
    blocks = []
    for i, (g, n, c, layers, heads) in enumerate(zip(*columns, strict=True)):
        overrides = (dict(num_latents_train=config.processor_latents_train,
                          num_latents_eval=config.processor_latents_eval) if i == processor else {})
        blocks.append(BlockConfig(g, n, c, layers, heads, **overrides))
    for i in range(1, len(blocks)):  # each block regroups the previous block's G x N latents
        before, groups = blocks[i - 1], blocks[i].num_groups
        for n in sorted({before.latents_train, before.latents_eval}):
            if (before.num_groups * n) % groups:
                raise ValueError(f"num_groups: expected block {i}'s group count to divide the "
                                 f"{before.num_groups} x {n} latents of block {i - 1}, got {groups}")
    first, last = config.num_groups[0], config.num_groups[-1]
    if last != first:  # the head reads the last latents group by group
        raise ValueError(f"num_groups: expected the last block to have the first block's {first} "
                         f"groups, got {last}")
    return blocks
