"""Equivalence with transformers' Perceiver: random models of many configs, built offline."""

import pytest
import torch

from perceiver.convert import convert_key, from_transformers

transformers = pytest.importorskip("transformers")

TEXT_CONFIGS = [  # heads, qk/v widths, latents, widening factors, blocks, layers, residual, GELU
    dict(num_cross_attention_heads=1, num_self_attention_heads=2, d_latents=32),
    dict(num_cross_attention_heads=4, num_self_attention_heads=8, qk_channels=16, v_channels=64,
         d_latents=64, self_attention_widening_factor=4, cross_attention_widening_factor=2),
    dict(num_cross_attention_heads=2, num_self_attention_heads=4, d_latents=48, num_blocks=3,
         num_self_attends_per_block=2, use_query_residual=False),
    dict(num_cross_attention_heads=8, num_self_attention_heads=1, d_latents=40, num_latents=3,
         cross_attention_shape_for_attention="q", hidden_act="gelu_new", num_blocks=2),
]


def hf_config(**overrides):
    base = dict(num_latents=12, d_latents=32, d_model=24, num_blocks=1, num_self_attends_per_block=2,
                max_position_embeddings=48, num_labels=5, attention_probs_dropout_prob=0.0)
    return transformers.PerceiverConfig(**(base | overrides))


def relative_error(a, b):
    return float((a - b).abs().max() / a.abs().max())


def padded_batch(length=48):
    ids = torch.randint(0, 262, (3, length))
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, 30:] = 0
    mask[2, 3:] = 0
    return ids, mask


@pytest.mark.parametrize("overrides", TEXT_CONFIGS)
@pytest.mark.parametrize("head", ["PerceiverForMaskedLM", "PerceiverForSequenceClassification"])
def test_text_heads_match_transformers(overrides, head):
    hf = getattr(transformers, head)(hf_config(**overrides)).eval()
    ours = from_transformers(hf).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(inputs=ids, attention_mask=mask).logits
        got = ours(inputs=ids, attention_mask=mask).logits
    assert got.shape == expected.shape
    assert relative_error(expected, got) < 1e-4


def test_masked_lm_decodes_any_positions_like_transformers():
    hf = transformers.PerceiverForMaskedLM(hf_config()).eval()
    ours = from_transformers(hf).eval()
    ids = torch.randint(0, 262, (2, 20))  # shorter than max_position_embeddings
    with torch.no_grad():
        expected = hf(inputs=ids).logits  # transformers always decodes all 48 positions
        assert relative_error(expected, ours(inputs=ids, query_index=torch.arange(48)).logits) < 1e-4
        assert relative_error(expected[:, :20], ours(inputs=ids).logits) < 1e-4


@pytest.mark.parametrize("overrides, image", [
    (dict(num_cross_attention_heads=1, num_self_attention_heads=2), (8, 8)),
    (dict(num_cross_attention_heads=1, num_self_attention_heads=4, num_blocks=2, d_latents=64,
          self_attention_widening_factor=2, cross_attention_widening_factor=2), (6, 10)),
    (dict(num_cross_attention_heads=3, num_self_attention_heads=4, qk_channels=12, v_channels=36,
          d_latents=36), (5, 7)),
])
def test_image_fourier_head_matches_transformers(overrides, image):
    hf = transformers.PerceiverForImageClassificationFourier(hf_config(**overrides)).eval()
    ours = from_transformers(hf, image_shape=image).eval()
    pixels = torch.randn(2, 3, *image)
    with torch.no_grad():
        assert relative_error(hf(inputs=pixels).logits, ours(inputs=pixels).logits) < 1e-4


def test_loads_a_saved_transformers_directory(tmp_path):
    hf = transformers.PerceiverForSequenceClassification(hf_config()).eval()
    hf.save_pretrained(tmp_path)
    ours = from_transformers(str(tmp_path)).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        assert relative_error(hf(inputs=ids, attention_mask=mask).logits,
                              ours(inputs=ids, attention_mask=mask).logits) < 1e-4


def test_unsupported_heads_and_configs_are_refused():
    hf = transformers.PerceiverForImageClassificationLearned(hf_config(image_size=4))
    with pytest.raises(ValueError, match="got PerceiverForImageClassificationLearned"):
        from_transformers(hf)
    with pytest.raises(ValueError, match="hidden_act: expected one of .* got 'relu'"):
        from_transformers(transformers.PerceiverForMaskedLM(hf_config(hidden_act="relu")))
    assert convert_key("perceiver.encoder.something_new.weight") is None


def test_language_perceiver_preset_matches_official_architecture():
    """The 201M-parameter ``deepmind/language-perceiver`` config converts to our preset."""
    from perceiver import presets
    from perceiver.convert import config_from_transformers

    config = transformers.PerceiverConfig(qk_channels=256, v_channels=1280)  # the checkpoint's values
    with torch.device("meta"):
        hf = transformers.PerceiverForMaskedLM(config)
    ours = config_from_transformers(hf)
    expected = presets.language_perceiver()
    expected.encoder.dropout = ours.encoder.dropout = 0.0
    expected.decoder.dropout = ours.decoder.dropout = 0.0
    assert ours == expected


@pytest.mark.parametrize("bands, resolution", [(4, (8, 8)), (16, (224, 224)), (7, (30, 11))])
def test_image_fourier_head_with_other_bands(bands, resolution):
    """transformers' head hard-codes 64 bands at 224 x 224; swap in another preprocessor."""
    mp = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    config = hf_config(num_cross_attention_heads=1, num_self_attention_heads=2)
    hf = transformers.PerceiverForImageClassificationFourier(config)
    prep = mp.PerceiverImagePreprocessor(config, prep_type="pixels", spatial_downsample=1,
                                         fourier_position_encoding_kwargs=dict(
                                             num_bands=bands, max_resolution=resolution, concat_pos=True,
                                             sine_only=False))
    hf.perceiver.input_preprocessor = prep
    hf.perceiver.encoder = mp.PerceiverEncoder(config, kv_dim=prep.num_channels)
    hf.eval()
    ours = from_transformers(hf, image_shape=(6, 9)).eval()
    assert ours.input_adapter.output_dim == 3 + 4 * bands + 2
    pixels = torch.randn(2, 3, 6, 9)
    with torch.no_grad():
        assert relative_error(hf(inputs=pixels).logits, ours(inputs=pixels).logits) < 1e-4
