"""Query providers: the decoder's output queries ``[B, O, C]``.

A provider is called as ``queries(x, index=None)`` where ``x [B, M, C_in]`` is the encoder's input
array (it gives batch size, dtype and, for input-derived queries, the queries themselves) and
``index`` picks a subset of the provider's queries (a 1-D tensor of flat indices ``[O]``, or
``[B, O]`` for a different subset per example, e.g. each example's masked positions; for
multimodal queries a dict of them). It has ``output_dim``. Multimodal providers return a dict per
modality. A provider that reads the values of ``x`` (not only its shape) says so with
``reads_inputs = True``: the model then hands it a computed array, not a ``ChunkedInput``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from perceiver.config import build, register
from perceiver.positions import FourierPositions, LearnedPositions, check_index


def _batched(table: Tensor, x: Tensor) -> Tensor:
    """``[O, C]`` shared by the batch, or ``[B, O, C]`` already per example."""
    if table.dim() == 3 and table.shape[0] != x.shape[0]:
        raise ValueError(f"query_index: expected {x.shape[0]} rows (one per example), got {table.shape[0]}")
    return table.to(x.dtype).expand(x.shape[0], -1, -1)


@register("learned_queries")
class LearnedQueries(nn.Module):
    """A fixed set of learned queries ``[num_queries, dim]`` (e.g. one class query)."""

    @dataclass
    class Config:
        num_queries: int = 1
        dim: int = 256

    def __init__(self, config: Config):
        super().__init__()
        self.table = LearnedPositions(config.num_queries, config.dim)
        self.output_dim = config.dim
        self.num_queries = config.num_queries

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return _batched(self.table(index), x)


@register("learned_position_queries")
class LearnedPositionQueries(LearnedQueries):
    """One learned query per input position (token outputs); by default the input's positions
    ``0..M-1``, or any ``index`` subset of the ``num_queries`` table (e.g. masked positions)."""

    @dataclass
    class Config:
        num_queries: int = 2048
        dim: int = 768

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        if index is not None:
            return _batched(self.table(index), x)
        # not a gather of arange(M), whose index check would break the graph under torch.compile
        if x.shape[1] > self.num_queries:
            raise ValueError(f"inputs: expected at most num_queries={self.num_queries} positions (one "
                             f"query each; query_index picks a subset), got {x.shape[1]}")
        return _batched(self.table.first(x.shape[1]), x)


@register("fourier_queries")
class FourierQueries(nn.Module):
    """Fourier position features of an output grid (dense outputs: pixels, audio samples), for
    all ``prod(index_dims)`` points or the flat ``index`` subset. ``endpoint=False`` places point
    ``i`` at ``-1 + 2 i / n``, the convention of DeepMind's subsampled queries (and so of its
    multimodal autoencoder's weights)."""

    @dataclass
    class Config:
        index_dims: tuple[int, ...] = (224, 224)
        num_bands: int = 64
        max_resolution: tuple[int, ...] | None = None
        concat_pos: bool = True
        sine_only: bool = False
        endpoint: bool = True

    def __init__(self, config: Config):
        super().__init__()
        self.positions = FourierPositions(
            config.index_dims, config.num_bands, config.max_resolution,
            config.concat_pos, config.sine_only, config.endpoint,
        )
        self.output_dim = self.positions.num_channels

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return _batched(self.positions(index), x)


@register("input_queries")
class InputQueries(nn.Module):
    """The encoder's input array itself as queries (one output per input element, as in optical
    flow); ``index`` selects input elements."""

    reads_inputs = True

    @dataclass
    class Config:
        dim: int = 64

    def __init__(self, config: Config):
        super().__init__()
        self.output_dim = config.dim

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.output_dim:
            raise ValueError(f"inputs: expected adapted inputs of width {self.output_dim} for "
                             f"input_queries, got {x.shape[-1]}")
        if index is None:
            return x
        check_index(index, x.shape[1], per_example=True)
        index = index.to(x.device)
        if index.dim() == 1:
            return x[:, index]
        if index.shape[0] != x.shape[0]:
            raise ValueError(f"query_index: expected {x.shape[0]} rows (one per example), "
                             f"got {index.shape[0]}")
        return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


@register("multimodal_queries")
class MultimodalQueries(nn.Module):
    """Per-modality providers, each padded to a common width ``max_i C_i + min_padding`` with a
    learned per-modality vector; returns ``{name: [B, O_i, C]}`` in sorted-name order."""

    @dataclass
    class Config:
        modalities: dict = field(default_factory=dict)  # name -> query provider config
        min_padding: int = 2

    def __init__(self, config: Config):
        super().__init__()
        self.names = sorted(config.modalities)
        self.providers = nn.ModuleDict({n: build(config.modalities[n]) for n in self.names})
        self.output_dim = max(p.output_dim for p in self.providers.values()) + config.min_padding
        self.padding = nn.ParameterDict({
            n: nn.Parameter(torch.randn(self.output_dim - p.output_dim) * 0.02)
            for n, p in self.providers.items()
        })
        self.reads_inputs = any(getattr(p, "reads_inputs", False) for p in self.providers.values())

    def forward(self, x: Tensor, index: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        if index is not None and not isinstance(index, dict):
            raise ValueError(f"query_index: expected a dict {{modality: index}} with modalities among "
                             f"{self.names} (a multimodal model), got {type(index).__name__}")
        index = dict(index or {})
        unknown = sorted(set(index) - set(self.names))
        if unknown:
            raise ValueError(f"query_index: unknown modalities {unknown}, expected among {self.names}")
        out = {}
        for name in self.names:
            q = self.providers[name](x, index.get(name))
            out[name] = torch.cat([q, _batched(self.padding[name][None], x).expand(
                *q.shape[:2], -1)], dim=-1)
        return out
