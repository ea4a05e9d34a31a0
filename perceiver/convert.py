"""Load Hugging Face transformers' Perceiver models into this package, weight for weight.

Supported heads: ``PerceiverForMaskedLM``, ``PerceiverForSequenceClassification``,
``PerceiverForImageClassificationFourier``. The converted model, called with the same tensors,
gives the same logits (fp32, eval mode); the MLM head decodes the input's positions (transformers
always decodes all ``max_position_embeddings``; pass ``query_index=torch.arange(2048)`` for that).
transformers is imported only when a path or hub id is given.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from perceiver.inputs import ImageFourierAdapter, TokenInputAdapter
from perceiver.model import DecoderConfig, EncoderConfig, PerceiverIO
from perceiver.outputs import ClassificationOutput, TiedTokenOutput
from perceiver.positions import fourier_channels
from perceiver.queries import LearnedPositionQueries, LearnedQueries

SUPPORTED = (
    "PerceiverForMaskedLM",
    "PerceiverForSequenceClassification",
    "PerceiverForImageClassificationFourier",
)

# transformers key (prefix) -> ours, applied in order; \1 keeps a layer number.
PREFIXES = [
    (r"perceiver\.embeddings\.latents", "encoder.latents"),
    (r"perceiver\.input_preprocessor\.embeddings\.", "input_adapter.embedding."),
    (r"perceiver\.input_preprocessor\.position_embeddings\.weight", "input_adapter.positions.table"),
    (r"perceiver\.encoder\.cross_attention\.", "encoder.cross_attention."),
    (r"perceiver\.encoder\.self_attends\.(\d+)\.", r"encoder.self_attention.layers.\1."),
    (r"perceiver\.decoder\.(?:decoder\.)?decoding_cross_attention\.", "decoder.cross_attention."),
    (r"perceiver\.decoder\.(?:decoder\.)?output_position_encodings\.position_embeddings",
     "queries.table.table"),
    (r"perceiver\.decoder\.decoder\.final_layer\.", "output_adapter.linear."),
    (r"embedding_decoder\.bias", "output_adapter.bias"),
]
# Inside a PerceiverLayer: transformers' names -> ours.
LAYER_PARTS = [
    (r"attention\.self\.layernorm1\.", "q_norm."),  # "norm." in self-attention layers
    (r"attention\.self\.layernorm2\.", "kv_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"layernorm\.", "mlp_norm."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
]
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def convert_key(key: str) -> str | None:
    """Our state-dict key for a transformers key, or None if no rule covers it."""
    for pattern, target in PREFIXES:
        match = re.match(pattern, key)
        if match is None:
            continue
        ours = match.expand(target) + key[match.end():]
        layer = re.match(r"(encoder\.cross_attention|encoder\.self_attention\.layers\.\d+|"
                         r"decoder\.cross_attention)\.(.*)", ours)
        if layer is None:
            return ours
        prefix, rest = layer.groups()
        for part, new in LAYER_PARTS:
            if re.match(part, rest):
                if new == "q_norm." and ".layers." in prefix:
                    new = "norm."
                return f"{prefix}.{re.sub(part, new, rest, count=1)}"
        return None
    return None


def _encoder_config(hf, input_dim: int) -> EncoderConfig:
    if hf.hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act: expected one of {sorted(ACTIVATIONS)}, got {hf.hidden_act!r}")
    shape = hf.cross_attention_shape_for_attention
    if shape not in ("q", "kv"):
        raise ValueError(f"cross_attention_shape_for_attention: expected 'q' or 'kv', got {shape!r}")
    cross_qk = hf.qk_channels or (input_dim if shape == "kv" else hf.d_latents)
    self_qk = hf.qk_channels or hf.d_latents
    return EncoderConfig(
        num_latents=hf.num_latents, latent_dim=hf.d_latents,
        num_cross_heads=hf.num_cross_attention_heads, cross_qk_dim=cross_qk,
        cross_v_dim=hf.v_channels or cross_qk,
        cross_widening_factor=hf.cross_attention_widening_factor,
        query_residual=hf.use_query_residual,
        num_self_layers=hf.num_self_attends_per_block, num_blocks=hf.num_blocks,
        num_self_heads=hf.num_self_attention_heads, self_qk_dim=self_qk,
        self_v_dim=hf.v_channels or self_qk,
        self_widening_factor=hf.self_attention_widening_factor,
        dropout=hf.attention_probs_dropout_prob, activation=ACTIVATIONS[hf.hidden_act],
    )


def _decoder_config(hf, layer) -> DecoderConfig:
    """Read the decoder's widths off its transformers cross-attention layer."""
    attention = layer.attention.self
    return DecoderConfig(
        num_heads=attention.num_heads, qk_dim=attention.qk_channels, v_dim=attention.v_channels,
        widening_factor=layer.mlp.dense1.out_features // layer.mlp.dense1.in_features,
        query_residual=layer.attention.use_query_residual,
        dropout=hf.attention_probs_dropout_prob, activation=ACTIVATIONS[hf.hidden_act],
    )


def _image_fourier_input(hf_model, image_shape):
    prep = hf_model.perceiver.input_preprocessor
    pos = prep.position_embeddings
    for name, value, expected in (("prep_type", prep.prep_type, "pixels"),
                                  ("spatial_downsample", prep.spatial_downsample, 1),
                                  ("concat_or_add_pos", prep.concat_or_add_pos, "concat"),
                                  ("concat_pos", pos.concat_pos, True),
                                  ("sine_only", pos.sine_only, False),
                                  ("project_pos_dim", prep.project_pos_dim, -1)):
        if value != expected:
            raise ValueError(f"input_preprocessor.{name}: expected {expected!r}, got {value!r}")
    if image_shape is None:
        size = hf_model.config.image_size
        image_shape = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return ImageFourierAdapter.Config(
        image_shape=tuple(image_shape), in_channels=prep.in_channels, num_bands=pos.num_bands,
        max_resolution=tuple(pos.max_resolution),
    )


def config_from_transformers(hf_model, image_shape=None) -> PerceiverIO.Config:
    """Our ``PerceiverIO.Config`` for a transformers Perceiver model."""
    name = type(hf_model).__name__
    if name not in SUPPORTED:
        raise ValueError(f"model: expected one of {list(SUPPORTED)}, got {name}")
    hf = hf_model.config
    decoder = hf_model.perceiver.decoder
    if name == "PerceiverForMaskedLM":
        text = TokenInputAdapter.Config(hf.vocab_size, hf.d_model, hf.max_position_embeddings)
        layer = decoder.decoding_cross_attention
        queries = LearnedPositionQueries.Config(hf.max_position_embeddings, decoder.num_channels)
        return PerceiverIO.Config(text, _encoder_config(hf, hf.d_model), queries,
                                  _decoder_config(hf, layer), TiedTokenOutput.Config(hf.vocab_size))
    if name == "PerceiverForSequenceClassification":
        inputs = TokenInputAdapter.Config(hf.vocab_size, hf.d_model, hf.max_position_embeddings)
        input_dim = hf.d_model
    else:
        inputs = _image_fourier_input(hf_model, image_shape)
        input_dim = inputs.in_channels + fourier_channels(2, inputs.num_bands)
    layer = decoder.decoder.decoding_cross_attention
    queries = LearnedQueries.Config(1, decoder.decoder.num_channels)
    return PerceiverIO.Config(inputs, _encoder_config(hf, input_dim), queries,
                              _decoder_config(hf, layer), ClassificationOutput.Config(hf.num_labels))


def _load_transformers(model_or_path):
    if isinstance(model_or_path, nn.Module):
        return model_or_path
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_or_path)
    architectures = getattr(config, "architectures", None) or []
    if not architectures or architectures[0] not in SUPPORTED:
        raise ValueError(f"model_or_path: expected a checkpoint of {list(SUPPORTED)}, got "
                         f"architectures={architectures}")
    return getattr(transformers, architectures[0]).from_pretrained(model_or_path)


@torch.no_grad()
def from_transformers(model_or_path, image_shape=None) -> PerceiverIO:
    """This package's model with the weights of a transformers Perceiver model (or of a directory
    written by its ``save_pretrained``, or a hub id when online). ``image_shape`` (H, W) fixes the
    image size of the Fourier image classifier (default: ``config.image_size``)."""
    hf_model = _load_transformers(model_or_path)
    model = PerceiverIO(config_from_transformers(hf_model, image_shape))
    source = hf_model.state_dict()
    converted, unmapped = {}, []
    for key, value in source.items():
        ours = convert_key(key)
        if ours is None:
            unmapped.append(key)
        else:
            converted[ours] = value
    if unmapped:
        raise ValueError(f"model: transformers weights with no counterpart here: {unmapped}")
    target = model.state_dict(keep_vars=True)
    first_name = {}  # tied weights (e.g. MLM logits and input embedding): one tensor, several names
    for key, tensor in target.items():
        first = first_name.setdefault(id(tensor), key)
        if first != key and first in converted:
            converted[key] = converted[first]
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    if missing or unexpected:
        raise ValueError(f"model: conversion left weights unset {missing} or unused {unexpected}")
    for key, value in converted.items():
        if target[key].shape != value.shape:
            raise ValueError(f"{key}: expected shape {list(target[key].shape)}, got {list(value.shape)}")
    model.load_state_dict(converted, strict=True)
    return model.train(hf_model.training)
