"""Named HiP variants (DeepMind's Mini, 16, 256 and 16x3) and ``build_hip``.

Each variant lists, per block, the groups G, latents N, channels C, self-attention layers and heads;
E is the embedding width. Cross-attention always has 1 head and MLP widening 1, self-attention
MLP widening 4.
"""

from __future__ import annotations

from perceiver.config import build
from perceiver.hip.bottleneck import HiPClassBottleneck
from perceiver.hip.model import HiP

VARIANTS = {
    "mini": dict(num_groups=(16, 1, 16), num_latents=(128, 64, 128), channels=(128, 1024, 128),
                 num_self_layers=(2, 1, 1), num_self_heads=(4, 32, 4), embedding_channels=32),
    "16": dict(num_groups=(16, 4, 1, 1, 1, 4, 16), num_latents=(128, 256, 256, 64, 256, 256, 128),
               channels=(128, 256, 512, 1024, 512, 256, 128), num_self_layers=(2, 2, 18, 2, 1, 1, 1),
               num_self_heads=(4, 8, 16, 32, 16, 8, 4), embedding_channels=32),
    "256": dict(num_groups=(256, 64, 16, 4, 1, 1, 1, 4, 16, 64, 256),
                num_latents=(32, 64, 128, 256, 256, 64, 256, 256, 128, 64, 32),
                channels=(64, 96, 128, 256, 512, 1024, 256, 128, 64, 32, 16),
                num_self_layers=(1, 1, 2, 2, 18, 2, 1, 1, 1, 1, 1),
                num_self_heads=(1, 2, 4, 8, 16, 32, 16, 8, 4, 2, 1), embedding_channels=16),
    "16x3": dict(num_groups=(16, 1, 16), num_latents=(128, 256, 128), channels=(128, 1024, 128),
                 num_self_layers=(2, 18, 2), num_self_heads=(4, 32, 4), embedding_channels=32),
}


def hip_config(variant: str, modalities: dict[str, tuple[int, int]], *, label_modalities=(),
               num_position_encoding_channels: int | None = None, **overrides):
    """The config of ``build_hip``'s model (``HiP.Config``, or ``HiPClassBottleneck.Config``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
    settings = dict(modalities={n: tuple(s) for n, s in modalities.items()},
                    num_position_encoding_channels=num_position_encoding_channels)
    settings |= VARIANTS[variant] | overrides
    if label_modalities:  # only those among the model's modalities take the class-bottleneck path
        return HiPClassBottleneck.Config(**settings, label_modalities=tuple(label_modalities))
    return HiP.Config(**settings)


def build_hip(variant: str, modalities: dict[str, tuple[int, int]], *, label_modalities=(),
              num_position_encoding_channels: int | None = None, **overrides) -> HiP:
    """A HiP model for ``modalities`` (name -> (length, channels)); with ``label_modalities`` the
    class-bottleneck model, whose labels enter and leave at the processor. ``overrides`` set any
    other ``HiP.Config`` field (dropout, drop_path, processor_latents_train, ...)."""
    config = hip_config(variant, modalities, label_modalities=label_modalities,
                        num_position_encoding_channels=num_position_encoding_channels, **overrides)
    return build(config)
