"""Named configurations, built by plain functions: ``PerceiverIO(presets.byte_mlm())``."""

from __future__ import annotations

from perceiver.inputs import (
    AudioPatchAdapter,
    ImageFourierAdapter,
    ImagePatchAdapter,
    MultimodalAdapter,
    OneHotLabelAdapter,
    TokenInputAdapter,
    VideoPatchAdapter,
)
from perceiver.model import DecoderConfig, EncoderConfig, PerceiverIO
from perceiver.outputs import (
    AudioSampleOutput,
    ClassificationOutput,
    LinearOutput,
    MultimodalOutput,
    OpticalFlowOutput,
    TiedTokenOutput,
)
from perceiver.queries import (
    FourierQueries,
    InputQueries,
    LearnedPositionQueries,
    LearnedQueries,
    MultimodalQueries,
)
from perceiver.tokenizer import VOCAB_SIZE, encode


def byte_mlm(max_seq_len=2048, dim=512, num_latents=256, latent_dim=512, num_layers=8, num_heads=8,
             widening_factor=1, **encoder) -> PerceiverIO.Config:
    """Byte-level masked LM: tied logits over the 262 byte ids, one query per position.

    Defaults are config A of the benchmarks (M = 2048, 256 x 512 latents, 8 layers, ~18M params).
    """
    return PerceiverIO.Config(
        input=TokenInputAdapter.Config(VOCAB_SIZE, dim, max_seq_len),
        encoder=EncoderConfig(num_latents=num_latents, latent_dim=latent_dim, num_cross_heads=num_heads,
                              cross_qk_dim=dim, cross_v_dim=dim, num_self_layers=num_layers,
                              num_self_heads=num_heads, cross_widening_factor=widening_factor,
                              self_widening_factor=widening_factor, **encoder),
        queries=LearnedPositionQueries.Config(max_seq_len, dim),
        decoder=DecoderConfig(num_heads=num_heads, qk_dim=dim, v_dim=dim, widening_factor=widening_factor),
        output=TiedTokenOutput.Config(VOCAB_SIZE),
    )


def language_perceiver() -> PerceiverIO.Config:
    """DeepMind's 201M-parameter language Perceiver (``deepmind/language-perceiver``): 2048 bytes,
    embedding 768, 256 x 1280 latents, 26 layers, qk 256 / v 1280, 8 heads."""
    return PerceiverIO.Config(
        input=TokenInputAdapter.Config(VOCAB_SIZE, 768, 2048),
        encoder=EncoderConfig(num_latents=256, latent_dim=1280, num_cross_heads=8, cross_qk_dim=256,
                              cross_v_dim=1280, num_self_layers=26, num_self_heads=8, self_qk_dim=256,
                              self_v_dim=1280),
        queries=LearnedPositionQueries.Config(2048, 768),
        decoder=DecoderConfig(num_heads=8, qk_dim=256, v_dim=768),
        output=TiedTokenOutput.Config(VOCAB_SIZE),
    )


def depth_slopes(num_heads: int) -> tuple[float, ...]:
    """``NestingDepth``'s default key-bias slopes: 0 (a head that reads every level), then
    geometric from 1 to 4 (``(0, 1, 2, 4)`` for 4 heads); ``(1,)`` for one head."""
    if num_heads == 1:
        return (1.0,)
    return (0.0, *(4 ** (i / max(num_heads - 2, 1)) for i in range(num_heads - 1)))


def byte_classifier(num_classes=10, max_seq_len=8192, dim=256, num_latents=256, latent_dim=512,
                    num_layers=6, num_heads=8, running_sums=0, depth_brackets="",
                    **encoder) -> PerceiverIO.Config:
    """Long-sequence byte classification (config B of the benchmarks): one learned class query.
    Inputs longer than 1,024 bytes stream through the cross-attention in chunks of 1,024
    (``cross_chunk_size``: the same outputs in less memory; at 32k bytes a training step's peak
    RSS is 0.89 GB against 0.98 GB with chunks of 4,096, in the same time). ``running_sums``:
    channels of the input's running sums (``perceiver.inputs.text.RunningSums``; nesting depth,
    counts).
    ``depth_brackets``: an opening and a closing character (``"[]"``) whose nesting depth is
    embedded and biases the cross-attention heads toward the outer levels
    (``perceiver.inputs.text.NestingDepth``, slopes ``depth_slopes(num_heads)``)."""
    encoder = dict(cross_chunk_size=1024) | encoder
    depth = {}
    if depth_brackets != "":
        if not isinstance(depth_brackets, str) or len(depth_brackets) != 2 \
                or any(len(encode(c)) != 1 for c in depth_brackets):
            raise ValueError(f"depth_brackets: expected two one-byte characters, such as '[]', "
                             f"got {depth_brackets!r}")
        depth = dict(depth_tokens=tuple(encode(depth_brackets)), depth_slopes=depth_slopes(num_heads))
    return PerceiverIO.Config(
        input=TokenInputAdapter.Config(VOCAB_SIZE, dim, max_seq_len, running_sums, **depth),
        encoder=EncoderConfig(num_latents=num_latents, latent_dim=latent_dim, num_cross_heads=num_heads,
                              cross_qk_dim=latent_dim, cross_v_dim=latent_dim, num_self_layers=num_layers,
                              num_self_heads=num_heads, **encoder),
        queries=LearnedQueries.Config(1, latent_dim),
        decoder=DecoderConfig(num_heads=num_heads, query_residual=True),
        output=ClassificationOutput.Config(num_classes),
    )


def image_classifier_fourier(image_shape=(224, 224), num_classes=1000, num_bands=64, num_latents=512,
                             latent_dim=1024, num_blocks=8, layers_per_block=6) -> PerceiverIO.Config:
    """ImageNet Perceiver IO with 2-D Fourier features (``deepmind/vision-perceiver-fourier``)."""
    return PerceiverIO.Config(
        input=ImageFourierAdapter.Config(image_shape, 3, num_bands, max_resolution=(224, 224)),
        encoder=EncoderConfig(num_latents=num_latents, latent_dim=latent_dim, num_cross_heads=1,
                              num_self_layers=layers_per_block, num_blocks=num_blocks, num_self_heads=8),
        queries=LearnedQueries.Config(1, latent_dim),
        decoder=DecoderConfig(num_heads=1, query_residual=True),
        output=ClassificationOutput.Config(num_classes),
    )


def multimodal_autoencoder(image_shape=(28, 28), patch_size=4, num_samples=4096, samples_per_patch=16,
                           num_classes=10, num_bands=16, num_latents=128, latent_dim=256, num_layers=4,
                           query_bands=16) -> PerceiverIO.Config:
    """Image + audio + label autoencoder: one query per image patch, audio patch and label."""
    h, w = image_shape
    grid = (h // patch_size, w // patch_size)
    return PerceiverIO.Config(
        input=MultimodalAdapter.Config(modalities={
            "image": ImagePatchAdapter.Config(image_shape, 1, patch_size, num_bands),
            "audio": AudioPatchAdapter.Config(num_samples, samples_per_patch, num_bands),
            "label": OneHotLabelAdapter.Config(num_classes),
        }),
        encoder=EncoderConfig(num_latents=num_latents, latent_dim=latent_dim, num_self_layers=num_layers),
        queries=MultimodalQueries.Config(modalities={
            "image": FourierQueries.Config(grid, query_bands),
            "audio": FourierQueries.Config((num_samples // samples_per_patch,), query_bands),
            "label": LearnedQueries.Config(1, 64),
        }),
        decoder=DecoderConfig(num_heads=1),
        output=MultimodalOutput.Config(modalities={
            "image": LinearOutput.Config(patch_size * patch_size),
            "audio": LinearOutput.Config(samples_per_patch),
            "label": ClassificationOutput.Config(num_classes),
        }),
    )


def optical_flow(image_shape=(368, 496)) -> PerceiverIO.Config:
    """DeepMind's optical-flow Perceiver IO (``deepmind/optical-flow-perceiver``): two frames whose
    pixels carry their 3x3 neighbourhoods (27 channels each) projected to 64 channels, 2048 x 512
    latents, 24 layers of 16 heads; each input element queries its own flow vector."""
    width = 64 + 2 * 2 * 64 + 2
    return PerceiverIO.Config(
        input=VideoPatchAdapter.Config((2, *image_shape), 27, temporal_patch=2, spatial_patch=1,
                                       projection_dim=64, num_bands=64, max_resolution=image_shape),
        encoder=EncoderConfig(num_latents=2048, latent_dim=512, num_cross_heads=1, cross_qk_dim=width,
                              cross_v_dim=width, num_self_layers=24, num_self_heads=16, self_qk_dim=512,
                              self_v_dim=512),
        queries=InputQueries.Config(width),
        decoder=DecoderConfig(num_heads=1, qk_dim=512, v_dim=512),  # transformers: the latent width
        output=OpticalFlowOutput.Config(image_shape, rescale=100.0),
    )


def kinetics_autoencoder(num_classes=700) -> PerceiverIO.Config:
    """DeepMind's Kinetics-700 multimodal autoencoder (``deepmind/multimodal-perceiver``): 16 frames
    of 224 x 224 in 1x4x4 patches, 30,720 audio samples in patches of 16, and the label (always
    masked, so it is inferred), 784 x 512 latents; decode subsampled queries via ``query_index``."""
    frames, samples = (16, 224, 224), 30720
    return PerceiverIO.Config(
        input=MultimodalAdapter.Config(modalities={
            "audio": AudioPatchAdapter.Config(samples, 16, num_bands=192, max_resolution=samples),
            "image": VideoPatchAdapter.Config(frames, 3, temporal_patch=1, spatial_patch=4, num_bands=32,
                                              max_resolution=frames),
            "label": OneHotLabelAdapter.Config(num_classes),
        }, min_padding=4, mask_probs={"audio": 0.0, "image": 0.0, "label": 1.0}),
        encoder=EncoderConfig(num_latents=784, latent_dim=512, num_cross_heads=1, cross_qk_dim=704,
                              cross_v_dim=704, num_self_layers=8, num_self_heads=8, self_qk_dim=512,
                              self_v_dim=512),
        queries=MultimodalQueries.Config(modalities={
            "audio": FourierQueries.Config((samples // 16,), 192, (samples,), endpoint=False),
            "image": FourierQueries.Config(frames, 32, frames, endpoint=False),
            "label": LearnedQueries.Config(1, 1024),
        }),
        decoder=DecoderConfig(num_heads=1, qk_dim=512, v_dim=512),
        output=MultimodalOutput.Config(modalities={
            "audio": AudioSampleOutput.Config(16),
            "image": LinearOutput.Config(3),
            "label": ClassificationOutput.Config(num_classes),
        }, projection_dim=512),
    )
