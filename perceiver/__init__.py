"""Perceiver IO in PyTorch: cross-attention encoder, latent self-attention, query decoder.

The building blocks live in submodules (``attention``, ``layers``, ``positions``, ``inputs``,
``queries``, ``outputs``, ``model``); ``perceiver.presets`` builds named configurations and
``perceiver.convert`` loads transformers' Perceiver checkpoints and exports back (transformers is
imported only there).
"""

from perceiver.attention import MultiHeadAttention
from perceiver.checkpoint import from_pretrained
from perceiver.config import build, from_dict, to_dict
from perceiver.layers import CrossAttentionLayer, SelfAttentionLayer, SelfAttentionStack, set_checkpointing
from perceiver.model import (
    DecoderConfig,
    EncoderConfig,
    Perceiver,
    PerceiverDecoder,
    PerceiverEncoder,
    PerceiverIO,
    PerceiverOutput,
)
from perceiver.positions import FourierPositions, LearnedPositions, fourier_features

# Register every component kind so that from_pretrained can rebuild any saved model.
from perceiver import inputs, outputs, queries  # noqa: E402, F401  isort: skip

__all__ = [
    "CrossAttentionLayer", "DecoderConfig", "EncoderConfig", "FourierPositions", "LearnedPositions",
    "MultiHeadAttention", "Perceiver", "PerceiverDecoder", "PerceiverEncoder", "PerceiverIO",
    "PerceiverOutput", "SelfAttentionLayer", "SelfAttentionStack", "build", "fourier_features",
    "from_dict", "from_pretrained", "set_checkpointing", "to_dict",
]
