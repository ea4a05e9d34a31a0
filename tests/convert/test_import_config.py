"""Configs read off transformers models: the official architectures, and refusals that name the
class or field the package cannot express (nothing is dropped silently)."""

import pytest
import torch
from torch import nn

from perceiver import presets
from perceiver.convert import config_from_transformers, from_transformers
from perceiver.model import PerceiverIO
from tests.convert.common import hf_config, transformers

VISION = dict(num_latents=512, d_latents=1024, d_model=512, num_blocks=8, num_self_attends_per_block=6,
              num_cross_attention_heads=1, num_self_attention_heads=8, num_labels=1000, image_size=224)
OFFICIAL = {  # the released checkpoints' configurations
    "PerceiverForMaskedLM": dict(qk_channels=256, v_channels=1280),
    "PerceiverForImageClassificationLearned": VISION,
    "PerceiverForImageClassificationFourier": VISION,
    "PerceiverForImageClassificationConvProcessing": VISION,
    "PerceiverForOpticalFlow": dict(num_latents=2048, d_latents=512, d_model=322, num_blocks=1,
                                    num_self_attends_per_block=24, num_self_attention_heads=16,
                                    num_cross_attention_heads=1),
    "PerceiverForMultimodalAutoencoding": dict(num_latents=784, d_latents=512, d_model=704, num_blocks=1,
                                               num_self_attends_per_block=8, num_self_attention_heads=8,
                                               num_cross_attention_heads=1, num_labels=700, image_size=224),
}


@pytest.mark.parametrize("head", sorted(OFFICIAL))
def test_official_architectures_have_the_same_parameter_count(head):
    with torch.device("meta"):
        hf = getattr(transformers, head)(transformers.PerceiverConfig(**OFFICIAL[head]))
        ours = PerceiverIO(config_from_transformers(hf))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("head, preset", [
    ("PerceiverForMaskedLM", presets.language_perceiver),
    ("PerceiverForOpticalFlow", presets.optical_flow),
    ("PerceiverForMultimodalAutoencoding", presets.kinetics_autoencoder),
])
def test_presets_are_the_official_architectures(head, preset):
    with torch.device("meta"):
        hf = getattr(transformers, head)(transformers.PerceiverConfig(**OFFICIAL[head]))
    ours = config_from_transformers(hf)
    expected = preset()
    expected.encoder.dropout = ours.encoder.dropout = 0.0  # transformers' default dropout is 0.1
    expected.decoder.dropout = ours.decoder.dropout = 0.0
    assert ours == expected


def test_unsupported_classes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="model: expected one of .* got 'PerceiverModel'"):
        from_transformers(transformers.PerceiverModel(hf_config()))
    transformers.PerceiverModel(hf_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"architectures=\['PerceiverModel'\]"):
        from_transformers(str(tmp_path))


def _fourier_head_with(**preprocessor):
    mp = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    config = hf_config()
    hf = transformers.PerceiverForImageClassificationFourier(config)
    kwargs = dict(num_bands=4, max_resolution=(8, 8), concat_pos=True, sine_only=False)
    kwargs |= preprocessor.pop("fourier", {})
    hf.perceiver.input_preprocessor = mp.PerceiverImagePreprocessor(
        config, **(dict(prep_type="pixels", spatial_downsample=1) | preprocessor),
        fourier_position_encoding_kwargs=kwargs)
    return hf


@pytest.mark.parametrize("make, message", [
    (lambda: transformers.PerceiverForMaskedLM(hf_config(hidden_act="relu")),
     "config.hidden_act: expected one of .* got 'relu'"),
    (lambda: _fourier_head_with(concat_or_add_pos="add"),
     "input_preprocessor.concat_or_add_pos: expected 'concat', got 'add'"),
    (lambda: _fourier_head_with(fourier=dict(sine_only=True)),
     "input_preprocessor.position_embeddings.sine_only: expected False, got True"),
    (lambda: _fourier_head_with(spatial_downsample=2),
     "input_preprocessor.spatial_downsample: expected 1, got 2"),
])
def test_settings_that_cannot_be_expressed_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        from_transformers(make(), image_shape=(8, 8))


def test_conv_stem_without_batchnorm_is_refused():
    hf = transformers.PerceiverForImageClassificationConvProcessing(hf_config())
    hf.perceiver.input_preprocessor.convnet.batchnorm = nn.Identity()
    with pytest.raises(ValueError, match="convnet.batchnorm: expected 'BatchNorm2d', got 'Identity'"):
        from_transformers(hf, image_shape=(16, 16))


def test_every_source_weight_consumed_and_every_target_weight_set():
    hf = transformers.PerceiverForSequenceClassification(hf_config())
    hf.perceiver.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"no counterpart here: \['perceiver.extra.weight'"):
        from_transformers(hf)
    hf = transformers.PerceiverForSequenceClassification(hf_config())
    hf.perceiver.embeddings.latents = nn.Parameter(torch.zeros(13, 32))
    with pytest.raises(ValueError, match=r"encoder.latents: expected shape \[12, 32\], got \[13, 32\]"):
        from_transformers(hf)
    hf = transformers.PerceiverForSequenceClassification(hf_config())
    del hf.perceiver.decoder.decoder.final_layer.bias  # a weight transformers no longer has
    hf.perceiver.decoder.decoder.final_layer.register_parameter("bias", None)
    with pytest.raises(ValueError, match=r"left weights unset \['output_adapter.linear.bias'\]"):
        from_transformers(hf)
