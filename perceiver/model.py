"""Perceiver IO: encoder (input -> latents), latent self-attention, decoder (queries -> outputs).

``PerceiverIO`` composes five swappable parts, each built from its config::

    input adapter   inputs            -> x [B, M, C]
    encoder         x                 -> latents [B, N, D]   (cross-attention + self-attention)
    query provider  x, query_index    -> queries [B, O, Cq]  (or a dict per modality)
    decoder         queries, latents  -> y [B, O, Cq]
    output adapter  y                 -> logits

A token adapter hands the encoder ``x`` as a ``ChunkedInput`` (ids and positions, embedded by the
streamed cross-attention a chunk at a time; computed whole where the encoder does not stream).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from perceiver.checkpoint import PretrainedMixin
from perceiver.config import build, register
from perceiver.inputs import MultimodalAdapter
from perceiver.layers import (
    CrossAttentionLayer,
    SelfAttentionStack,
    attend_in_chunks,
    check_activation,
    checkpointed,
)
from perceiver.outputs import build_output
from perceiver.padded_input import PaddedInput
from perceiver.streamed_attention import ChunkedInput


@dataclass
class EncoderConfig:
    """Latent array, input cross-attention and latent self-attention stack.

    ``*_qk_dim``/``*_v_dim`` default to the query width (``latent_dim``). The stack of
    ``num_self_layers`` layers is applied ``num_blocks`` times with shared weights. With
    ``cross_attend_every_block`` (the original Perceiver) every block starts with a cross-attention
    to the input; blocks after the first share one cross-attention's weights. ``cross_chunk_size``
    streams inputs longer than that through the cross-attention in chunks (same outputs and
    gradients; memory O(chunk) instead of O(M); the backward pass recomputes the keys and values).
    ``checkpointing``: activation checkpointing of the cross-attention and of every self-attention
    layer (``perceiver.set_checkpointing`` switches it in a built model, decoder included).
    """

    num_latents: int = 256
    latent_dim: int = 512
    num_cross_heads: int = 1
    cross_qk_dim: int | None = None
    cross_v_dim: int | None = None
    cross_widening_factor: int = 1
    query_residual: bool = True
    num_self_layers: int = 6
    num_blocks: int = 1
    num_self_heads: int = 8
    self_qk_dim: int | None = None
    self_v_dim: int | None = None
    self_widening_factor: int = 1
    cross_attend_every_block: bool = False
    dropout: float = 0.0
    activation: str = "gelu"
    checkpointing: bool = False
    cross_chunk_size: int | None = None


@dataclass
class DecoderConfig:
    """Output-query cross-attention. ``chunk_size`` decodes at most that many queries at a time
    (outputs are identical; peak memory is bounded for very large query sets). With
    ``checkpointing`` a training step keeps only the chunks' outputs and recomputes each chunk in
    the backward pass, one at a time (decoding in one chunk it is not checkpointed: it would be
    recomputed right after its forward pass, saving nothing)."""

    num_heads: int = 1
    qk_dim: int | None = None
    v_dim: int | None = None
    widening_factor: int = 1
    query_residual: bool = False
    dropout: float = 0.0
    activation: str = "gelu"
    chunk_size: int | None = None
    checkpointing: bool = False


def _dataclass_from(cls, value):
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{cls.__name__}: expected a dict or {cls.__name__}, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}")
    return cls(**value)


@dataclass
class PerceiverOutput:
    """``logits``: a tensor or a dict per modality; ``latents``: ``[B, N, D]``; with
    ``return_attention``: ``attentions`` = {"cross": [B,H,N,M], "self": [[B,H,N,N], ...],
    "decoder": [B,H,O,N] or a dict per modality}."""

    logits: Any
    latents: Tensor
    attentions: dict | None = None


class PerceiverEncoder(nn.Module):
    """``x [B, M, input_dim]`` (+ mask ``[B, M]``) -> latents ``[B, num_latents, latent_dim]``.
    ``x`` may be a ``ChunkedInput``: computed a chunk at a time where the cross-attention streams
    it, whole (once) otherwise."""

    def __init__(self, config: EncoderConfig, input_dim: int):
        super().__init__()
        check_activation(config.activation)
        self.config = config
        d = config.latent_dim
        self.latents = nn.Parameter(torch.randn(config.num_latents, d) * 0.02)
        self.checkpointing = config.checkpointing  # of the cross-attention; the stack has its own

        def cross_attention():
            return CrossAttentionLayer(
                d, input_dim, config.num_cross_heads, config.cross_qk_dim, config.cross_v_dim,
                config.cross_widening_factor, config.query_residual, config.dropout,
                config.activation, config.cross_chunk_size,
            )

        self.cross_attention = cross_attention()
        repeat = config.cross_attend_every_block and config.num_blocks > 1
        self.repeated_cross_attention = cross_attention() if repeat else None
        self.self_attention = SelfAttentionStack(
            config.num_self_layers, d, checkpointing=config.checkpointing,
            num_heads=config.num_self_heads, qk_dim=config.self_qk_dim, v_dim=config.self_v_dim,
            widening_factor=config.self_widening_factor, dropout=config.dropout,
            activation=config.activation,
        )

    def _cross(self, layer, z, x, attention_mask, weights):
        if weights is not None:
            z, w = layer(z, x, attention_mask, return_weights=True)
            weights.setdefault("cross", w)
            return z
        if layer.streams(x.shape[1]):  # keeps little anyway: not checkpointed
            return layer(z, x, attention_mask)
        return checkpointed(layer, z, x, attention_mask, enabled=self.checkpointing)

    def forward(self, x: Tensor | ChunkedInput | PaddedInput, attention_mask: Tensor | None = None,
                return_weights=False):
        layer = self.cross_attention
        if isinstance(x, ChunkedInput):  # computed whole, once, unless streamed in chunks that pay
            if return_weights or not layer.streams(x.shape[1]) or not x.pays_in_chunks(layer.chunk_size):
                x = x.materialise()
        elif isinstance(x, PaddedInput) and (return_weights or layer.streams(x.shape[1])):
            x = x.materialise()  # once for every block's cross-attention
        weights = {"self": []} if return_weights else None
        z = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)
        z = self._cross(self.cross_attention, z, x, attention_mask, weights)
        for block in range(self.config.num_blocks):
            if block > 0 and self.repeated_cross_attention is not None:
                z = self._cross(self.repeated_cross_attention, z, x, attention_mask, weights)
            if return_weights:
                z, w = self.self_attention(z, return_weights=True)
                weights["self"].extend(w)
            else:
                z = self.self_attention(z)
        return (z, weights) if return_weights else z


class PerceiverDecoder(nn.Module):
    """Queries ``[B, O, query_dim]`` (or a dict of them) attend to latents -> ``[B, O, query_dim]``."""

    def __init__(self, config: DecoderConfig, query_dim: int, latent_dim: int):
        super().__init__()
        check_activation(config.activation)
        self.chunk_size = config.chunk_size
        self.cross_attention = CrossAttentionLayer(
            query_dim, latent_dim, config.num_heads, config.qk_dim, config.v_dim,
            config.widening_factor, config.query_residual, config.dropout, config.activation,
        )
        self.checkpointing = config.checkpointing

    def forward(self, queries, latents: Tensor, return_weights: bool = False):
        if isinstance(queries, dict):
            out = {k: self.forward(q, latents, return_weights) for k, q in queries.items()}
            if not return_weights:
                return out
            return {k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()}
        if return_weights:
            return self.cross_attention(queries, latents, return_weights=True)
        return attend_in_chunks(self.cross_attention, queries, latents, self.chunk_size, self.checkpointing)


def _adapt(adapter: nn.Module, inputs, attention_mask, **kwargs):
    """The adapter's ``(x, attention_mask)``, with ``x`` as a ``ChunkedInput`` or a ``PaddedInput``
    where the adapter offers one (``chunked``, ``padded``; the encoder computes it whole where it
    cannot use it)."""
    recipe = getattr(adapter, "chunked", None)
    if recipe is None:  # not `or`: torch.compile cannot take a method's truth value (a graph break)
        recipe = getattr(adapter, "padded", None)
    return (adapter if recipe is None else recipe)(inputs, attention_mask, **kwargs)


@register("perceiver_io")
class PerceiverIO(PretrainedMixin, nn.Module):
    """Perceiver IO built from adapter, query and output configs (see the module docstring).

    Call with ``inputs`` (a tensor, or a dict per modality), ``attention_mask [B, M]`` (1 keep,
    0 pad), ``query_index`` (decode only these queries: a 1-D index, or a dict per modality) and
    ``modality_mask`` (multimodal inputs: ``{name: [B] bool}`` replaced by a mask token).
    """

    @dataclass
    class Config:
        input: Any = None
        encoder: EncoderConfig = field(default_factory=EncoderConfig)
        queries: Any = None
        decoder: DecoderConfig = field(default_factory=DecoderConfig)
        output: Any = None

        def __post_init__(self):
            self.encoder = _dataclass_from(EncoderConfig, self.encoder)
            self.decoder = _dataclass_from(DecoderConfig, self.decoder)

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.input_adapter = build(config.input)
        self.encoder = PerceiverEncoder(config.encoder, self.input_adapter.output_dim)
        self.queries = build(config.queries)
        self.decoder = PerceiverDecoder(config.decoder, self.queries.output_dim,
                                        config.encoder.latent_dim)
        self.output_adapter = build_output(config.output, self.queries.output_dim)
        if hasattr(self.output_adapter, "tie_to"):
            self.output_adapter.tie_to(self.input_adapter)

    def forward(self, inputs, attention_mask: Tensor | None = None, *, query_index=None,
                modality_mask=None, return_attention: bool = False) -> PerceiverOutput:
        if modality_mask is None:
            x, attention_mask = _adapt(self.input_adapter, inputs, attention_mask)
        elif isinstance(self.input_adapter, MultimodalAdapter):
            x, attention_mask = _adapt(self.input_adapter, inputs, attention_mask,
                                       modality_mask=modality_mask)
        else:
            raise ValueError(f"modality_mask: expected a model with a multimodal input adapter, got "
                             f"{type(self.input_adapter).__name__}")
        if not isinstance(x, Tensor) and getattr(self.queries, "reads_inputs", False):
            x = x.materialise()
        x = x.to(self.encoder.latents.dtype)  # float16 / float64 inputs meet float32 weights
        if return_attention:
            latents, attentions = self.encoder(x, attention_mask, return_weights=True)
            y, attentions["decoder"] = self.decoder(self.queries(x, query_index), latents, True)
        else:
            latents, attentions = self.encoder(x, attention_mask), None
            y = self.decoder(self.queries(x, query_index), latents)
        return PerceiverOutput(self.output_adapter(y), latents, attentions)


@register("perceiver")
class Perceiver(PretrainedMixin, nn.Module):
    """The original Perceiver classifier: cross-attention repeated before every latent block
    (weights shared after the first), latents averaged, LayerNorm, linear -> ``[B, num_classes]``."""

    @dataclass
    class Config:
        input: Any = None
        encoder: EncoderConfig = field(
            default_factory=lambda: EncoderConfig(num_blocks=8, cross_attend_every_block=True))
        num_classes: int = 10

        def __post_init__(self):
            self.encoder = _dataclass_from(EncoderConfig, self.encoder)

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.input_adapter = build(config.input)
        self.encoder = PerceiverEncoder(config.encoder, self.input_adapter.output_dim)
        self.norm = nn.LayerNorm(config.encoder.latent_dim)
        self.classifier = nn.Linear(config.encoder.latent_dim, config.num_classes)

    def forward(self, inputs, attention_mask: Tensor | None = None, *,
                return_attention: bool = False) -> PerceiverOutput:
        x, attention_mask = _adapt(self.input_adapter, inputs, attention_mask)
        out = self.encoder(x.to(self.encoder.latents.dtype), attention_mask, return_weights=return_attention)
        latents, attentions = out if return_attention else (out, None)
        return PerceiverOutput(self.classifier(self.norm(latents.mean(dim=1))), latents, attentions)
