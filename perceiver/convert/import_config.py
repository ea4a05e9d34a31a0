"""Our ``PerceiverIO.Config`` for a transformers Perceiver model, read off its config and modules.

Every setting a head takes from its modules (preprocessor type, bands, paddings, decoder widths)
is read from the module, and any value this package cannot express raises a ``ValueError`` naming
the field, so nothing is silently dropped.
"""

from __future__ import annotations

from perceiver.inputs import (
    AudioPatchAdapter,
    Conv1x1Adapter,
    ConvStemAdapter,
    ImageFourierAdapter,
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

SUPPORTED = (
    "PerceiverForMaskedLM",
    "PerceiverForSequenceClassification",
    "PerceiverForImageClassificationLearned",
    "PerceiverForImageClassificationFourier",
    "PerceiverForImageClassificationConvProcessing",
    "PerceiverForOpticalFlow",
    "PerceiverForMultimodalAutoencoding",
)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def expect(where: str, value, *allowed) -> None:
    """Refuse a setting outside ``allowed`` (one that cannot be expressed), naming it."""
    if value not in allowed:
        shown = repr(allowed[0]) if len(allowed) == 1 else f"one of {list(allowed)}"
        raise ValueError(f"{where}: expected {shown}, got {value!r}")


def _pair(size) -> tuple[int, int]:
    return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


def encoder_config(hf, input_dim: int) -> EncoderConfig:
    expect("config.hidden_act", hf.hidden_act, *ACTIVATIONS)
    shape = hf.cross_attention_shape_for_attention
    expect("config.cross_attention_shape_for_attention", shape, "q", "kv")
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


def decoder_config(hf, basic_decoder) -> DecoderConfig:
    """Read the decoder's widths off a transformers ``PerceiverBasicDecoder``."""
    layer = basic_decoder.decoding_cross_attention
    attention = layer.attention.self
    return DecoderConfig(
        num_heads=attention.num_heads, qk_dim=attention.qk_channels, v_dim=attention.v_channels,
        widening_factor=layer.mlp.dense1.out_features // layer.mlp.dense1.in_features,
        query_residual=layer.attention.use_query_residual,
        dropout=hf.attention_probs_dropout_prob, activation=ACTIVATIONS[hf.hidden_act],
    )


def _fourier(where, encoding) -> dict:
    expect(f"{where}.position_encoding_type", type(encoding).__name__, "PerceiverFourierPositionEncoding")
    return dict(num_bands=encoding.num_bands, max_resolution=tuple(encoding.max_resolution))


def image_input(prep, image_shape, frames=None):
    """Our adapter config for a ``PerceiverImagePreprocessor`` (dispatching on its ``prep_type``).
    ``image_shape`` (H, W) is the input size; ``frames`` the frame count of video inputs."""
    where = "input_preprocessor"
    expect(f"{where}.concat_or_add_pos", prep.concat_or_add_pos, "concat")
    pos = prep.position_embeddings
    if prep.position_encoding_type == "fourier":
        expect(f"{where}.position_embeddings.concat_pos", pos.concat_pos, True)
        expect(f"{where}.position_embeddings.sine_only", pos.sine_only, False)
    if prep.prep_type == "patches":
        dt, p = prep.temporal_downsample, prep.spatial_downsample
        in_channels, projection = prep.in_channels, None
        if prep.conv_after_patching:
            in_channels = prep.conv_after_patches.in_features // (dt * p * p)
            projection = prep.conv_after_patches.out_features
        expect(f"{where}.project_pos_dim", prep.project_pos_dim, -1)
        return VideoPatchAdapter.Config(
            frames_shape=(frames, *image_shape), in_channels=in_channels, temporal_patch=dt,
            spatial_patch=p, projection_dim=projection, **_fourier(where, pos))
    expect(f"{where}.spatial_downsample", prep.spatial_downsample, 1)
    if prep.prep_type == "pixels":
        expect(f"{where}.project_pos_dim", prep.project_pos_dim, -1)
        return ImageFourierAdapter.Config(image_shape=image_shape, in_channels=prep.in_channels,
                                          **_fourier(where, pos))
    if prep.prep_type == "conv":
        expect(f"{where}.project_pos_dim", prep.project_pos_dim, -1)
        expect(f"{where}.convnet.batchnorm", type(prep.convnet.batchnorm).__name__, "BatchNorm2d")
        expect(f"{where}.convnet.batchnorm.eps", prep.convnet.batchnorm.eps, 1e-5)
        return ConvStemAdapter.Config(
            image_shape=image_shape, in_channels=prep.convnet.conv.in_channels,
            out_channels=prep.convnet.conv.out_channels, padding="transformers", **_fourier(where, pos))
    # conv1x1 with a learned position table, optionally projected to its own width
    expect(f"{where}.position_encoding_type", prep.position_encoding_type, "trainable")
    dim = pos.position_embeddings.shape[1]
    expect(f"{where}.project_pos_dim", prep.project_pos_dim, -1, dim)
    return Conv1x1Adapter.Config(
        image_shape=image_shape, in_channels=prep.convnet_1x1.in_channels,
        out_channels=prep.convnet_1x1.out_channels, position_dim=dim,
        project_positions=prep.project_pos_dim > 0)


def _classifier(hf, decoder, input_config, input_dim) -> PerceiverIO.Config:
    basic = decoder.decoder
    expect("decoder.decoder.position_encoding_type", basic.position_encoding_type, "trainable")
    expect("decoder.decoder.final_project", basic.final_project, True)
    queries = LearnedQueries.Config(1, basic.num_channels)
    return PerceiverIO.Config(input_config, encoder_config(hf, input_dim), queries,
                              decoder_config(hf, basic), ClassificationOutput.Config(hf.num_labels))


def _query_config(decoder):
    """Query provider of one modality of ``PerceiverMultimodalDecoder``."""
    basic = getattr(decoder, "decoder", decoder)  # classification/video decoders wrap a basic one
    expect("decoder.modalities.*.concat_preprocessed_input", basic.concat_preprocessed_input, False)
    expect("decoder.modalities.*.positions_projection", type(basic.positions_projection).__name__,
           "Identity")
    encoding = basic.output_position_encodings
    if basic.position_encoding_type == "trainable":
        return LearnedQueries.Config(*encoding.position_embeddings.shape)
    dims = basic.output_index_dims
    return FourierQueries.Config(
        index_dims=(dims,) if isinstance(dims, int) else tuple(dims),
        concat_pos=encoding.concat_pos, sine_only=encoding.sine_only, endpoint=False,
        **_fourier("decoder.modalities.*", encoding))


OUTPUTS = {
    "PerceiverAudioPostprocessor": lambda linear: AudioSampleOutput.Config(linear.out_features),
    "PerceiverProjectionPostprocessor": lambda linear: LinearOutput.Config(linear.out_features),
    "PerceiverClassificationPostprocessor": lambda linear: ClassificationOutput.Config(linear.out_features),
}


def _multimodal(hf, model) -> PerceiverIO.Config:
    prep, decoder, post = model.input_preprocessor, model.decoder, model.output_postprocessor
    inputs = {}
    for name, p in prep.modalities.items():
        kind = type(p).__name__
        if kind == "PerceiverAudioPreprocessor":
            expect(f"input_preprocessor.modalities.{name}.concat_or_add_pos", p.concat_or_add_pos, "concat")
            expect(f"input_preprocessor.modalities.{name}.project_pos_dim", p.project_pos_dim, -1)
            fourier = _fourier(f"input_preprocessor.modalities.{name}", p.position_embeddings)
            inputs[name] = AudioPatchAdapter.Config(
                num_samples=hf.num_frames * hf.audio_samples_per_frame,
                samples_per_patch=p.samples_per_patch, num_bands=fourier["num_bands"],
                max_resolution=fourier["max_resolution"][0])
        elif kind == "PerceiverImagePreprocessor":
            frames, *shape = hf.output_shape[1:]  # autoencoding: the input has the output's shape
            inputs[name] = image_input(p, tuple(shape), frames=frames)
        else:
            expect(f"input_preprocessor.modalities.{name}", kind, "PerceiverOneHotPreprocessor")
            inputs[name] = OneHotLabelAdapter.Config(hf.num_labels)
    input_config = MultimodalAdapter.Config(inputs, prep.min_padding_size, dict(prep.mask_probs))
    queries = MultimodalQueries.Config({n: _query_config(d) for n, d in decoder.modalities.items()},
                                       decoder.min_padding_size)
    outputs = {}
    for name, p in post.modalities.items():
        expect(f"output_postprocessor.modalities.{name}", type(p).__name__, *OUTPUTS)
        outputs[name] = OUTPUTS[type(p).__name__](p.classifier)
    output = MultimodalOutput.Config(outputs, projection_dim=decoder.decoder.final_layer.out_features)
    return PerceiverIO.Config(input_config, encoder_config(hf, prep.num_channels), queries,
                              decoder_config(hf, decoder.decoder), output)


def config_from_transformers(hf_model, image_shape=None) -> PerceiverIO.Config:
    """Our ``PerceiverIO.Config`` for a transformers Perceiver head. ``image_shape`` (H, W) fixes
    the input size of the image classifiers (default: ``config.image_size``)."""
    name = type(hf_model).__name__
    expect("model", name, *SUPPORTED)
    hf, model = hf_model.config, hf_model.perceiver
    decoder = model.decoder
    if name == "PerceiverForMaskedLM":
        text = TokenInputAdapter.Config(hf.vocab_size, hf.d_model, hf.max_position_embeddings)
        expect("decoder.final_project", decoder.final_project, False)
        queries = LearnedPositionQueries.Config(hf.max_position_embeddings, decoder.num_channels)
        return PerceiverIO.Config(text, encoder_config(hf, hf.d_model), queries,
                                  decoder_config(hf, decoder), TiedTokenOutput.Config(hf.vocab_size))
    if name == "PerceiverForSequenceClassification":
        text = TokenInputAdapter.Config(hf.vocab_size, hf.d_model, hf.max_position_embeddings)
        return _classifier(hf, decoder, text, hf.d_model)
    if name.startswith("PerceiverForImageClassification"):
        shape = _pair(hf.image_size if image_shape is None else image_shape)
        prep = model.input_preprocessor
        return _classifier(hf, decoder, image_input(prep, shape), prep.num_channels)
    if name == "PerceiverForOpticalFlow":
        prep = model.input_preprocessor
        expect("input_preprocessor.prep_type", prep.prep_type, "patches")
        expect("decoder.output_num_channels", decoder.output_num_channels, 2)
        shape = tuple(decoder.output_image_shape)
        flow = OpticalFlowOutput.Config(image_shape=shape, rescale=float(decoder.rescale_factor))
        return PerceiverIO.Config(
            image_input(prep, shape, frames=prep.temporal_downsample), encoder_config(hf, prep.num_channels),
            InputQueries.Config(prep.num_channels), decoder_config(hf, decoder.decoder), flow)
    return _multimodal(hf, model)

