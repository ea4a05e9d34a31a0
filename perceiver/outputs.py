"""Output adapters: decoder outputs ``[B, O, C]`` -> task logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from perceiver.config import REGISTRY, register


@register("classification")
class ClassificationOutput(nn.Module):
    """Linear head; a single query gives ``[B, num_classes]``, several ``[B, O, num_classes]``."""

    @dataclass
    class Config:
        num_classes: int = 10

    def __init__(self, config: Config, query_dim: int):
        super().__init__()
        self.linear = nn.Linear(query_dim, config.num_classes)

    def forward(self, y: Tensor) -> Tensor:
        logits = self.linear(y)
        return logits[:, 0] if logits.shape[1] == 1 else logits


@register("tied_tokens")
class TiedTokenOutput(nn.Module):
    """Token logits from the input embedding (tied) plus a bias: ``[B, O, dim] -> [B, O, vocab]``.

    The embedding is the input adapter's ``embedding`` (attached by ``tie_to``); the decoder's
    query width must equal the embedding width.
    """

    @dataclass
    class Config:
        vocab_size: int = 262

    def __init__(self, config: Config, query_dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.embedding = None

    def tie_to(self, input_adapter: nn.Module) -> None:
        embedding = getattr(input_adapter, "embedding", None)
        if not isinstance(embedding, nn.Embedding) or embedding.num_embeddings != len(self.bias):
            raise ValueError(f"output: tied_tokens needs an input adapter with an embedding of "
                             f"{len(self.bias)} tokens, got {type(input_adapter).__name__}")
        self.embedding = embedding

    def forward(self, y: Tensor) -> Tensor:
        return y @ self.embedding.weight.T.to(y.dtype) + self.bias.to(y.dtype)


@register("linear")
class LinearOutput(nn.Module):
    """A linear projection per query (pixel/patch/sample reconstruction): ``[B, O, out_dim]``."""

    @dataclass
    class Config:
        out_dim: int = 3
        zero_init: bool = False

    def __init__(self, config: Config, query_dim: int):
        super().__init__()
        self.linear = nn.Linear(query_dim, config.out_dim)
        if config.zero_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, y: Tensor) -> Tensor:
        return self.linear(y)


@register("audio_samples")
class AudioSampleOutput(nn.Module):
    """Audio patches back to samples: ``[B, O, C] -> [B, O * samples_per_patch]``."""

    @dataclass
    class Config:
        samples_per_patch: int = 16

    def __init__(self, config: Config, query_dim: int):
        super().__init__()
        self.linear = nn.Linear(query_dim, config.samples_per_patch)

    def forward(self, y: Tensor) -> Tensor:
        return rearrange(self.linear(y), "b o p -> b (o p)")


@register("optical_flow")
class OpticalFlowOutput(nn.Module):
    """Per-pixel flow: ``[B, H*W, C] -> [B, H, W, 2]``, divided by ``rescale`` (DeepMind: 100)."""

    @dataclass
    class Config:
        image_shape: tuple[int, int] = (368, 496)
        rescale: float = 100.0

    def __init__(self, config: Config, query_dim: int):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(query_dim, 2)

    def forward(self, y: Tensor) -> Tensor:
        h, w = self.config.image_shape
        return rearrange(self.linear(y) / self.config.rescale, "b (h w) c -> b h w c", h=h, w=w)


@register("multimodal_output")
class MultimodalOutput(nn.Module):
    """One output adapter per modality: ``{name: [B, O_i, C]} -> {name: logits}``. With
    ``projection_dim`` a linear layer shared by all modalities comes first (DeepMind's multimodal
    decoder projects every query to 512 channels before the per-modality heads)."""

    @dataclass
    class Config:
        modalities: dict = field(default_factory=dict)  # name -> output adapter config
        projection_dim: int | None = None

    def __init__(self, config: Config, query_dim: int):
        super().__init__()
        self.projection = None
        if config.projection_dim is not None:
            self.projection = nn.Linear(query_dim, config.projection_dim)
            query_dim = config.projection_dim
        self.heads = nn.ModuleDict({n: build_output(c, query_dim) for n, c in config.modalities.items()})

    def forward(self, y: dict[str, Tensor]) -> dict[str, Tensor]:
        unknown = sorted(set(y) - set(self.heads))
        if unknown:
            raise ValueError(f"outputs: unknown modalities {unknown}, expected among {sorted(self.heads)}")
        if self.projection is not None:
            y = {name: self.projection(value) for name, value in y.items()}
        return {name: self.heads[name](value) for name, value in y.items()}


def build_output(config, query_dim: int) -> nn.Module:
    """Output adapters are built like other components, plus the decoder's query width."""
    return REGISTRY[config.kind](config, query_dim)


__all__ = ["AudioSampleOutput", "ClassificationOutput", "LinearOutput", "MultimodalOutput",
           "OpticalFlowOutput", "TiedTokenOutput", "build_output"]
