"""Every transformers Perceiver head, randomly initialised in several configs, gives the same
logits after conversion (fp32, eval mode; bound 1e-4 of the largest logit)."""

import pytest
import torch

from perceiver.convert import from_transformers
from tests.convert.common import hf_config, padding_mask, randomized, relative_error, transformers

ENCODERS = [  # heads, qk/v widths, latents, widening factors, blocks, layers, residual, GELU
    dict(),
    dict(num_cross_attention_heads=4, num_self_attention_heads=8, qk_channels=16, v_channels=64,
         d_latents=64, self_attention_widening_factor=4, cross_attention_widening_factor=2),
    dict(num_cross_attention_heads=2, num_self_attention_heads=4, d_latents=48, num_blocks=3,
         num_self_attends_per_block=2, use_query_residual=False),
    dict(num_cross_attention_heads=8, num_self_attention_heads=1, d_latents=40, num_latents=3,
         cross_attention_shape_for_attention="q", hidden_act="gelu_new", num_blocks=2),
]


def convert(head, config, **kwargs):
    hf = randomized(getattr(transformers, head)(config))
    return hf, from_transformers(hf, **kwargs).eval()


@pytest.mark.parametrize("overrides", ENCODERS)
@pytest.mark.parametrize("head", ["PerceiverForMaskedLM", "PerceiverForSequenceClassification"])
def test_text_heads(overrides, head):
    hf, ours = convert(head, hf_config(**overrides))
    ids, mask = torch.randint(0, 262, (3, 48)), padding_mask(3, 48)
    with torch.no_grad():
        assert relative_error(hf(inputs=ids, attention_mask=mask).logits,
                              ours(ids, attention_mask=mask).logits) < 1e-4


def test_masked_lm_decodes_any_positions():
    hf, ours = convert("PerceiverForMaskedLM", hf_config())
    ids = torch.randint(0, 262, (2, 20))  # shorter than max_position_embeddings
    with torch.no_grad():
        expected = hf(inputs=ids).logits  # transformers always decodes all 48 positions
        assert relative_error(expected, ours(ids, query_index=torch.arange(48)).logits) < 1e-4
        assert relative_error(expected[:, :20], ours(ids).logits) < 1e-4


IMAGE_CASES = [  # (encoder overrides, image shape)
    (ENCODERS[0], (8, 8)),
    (dict(num_self_attention_heads=4, num_blocks=2, d_latents=64, self_attention_widening_factor=2,
          cross_attention_widening_factor=2), (6, 10)),
    (dict(num_cross_attention_heads=3, num_self_attention_heads=4, qk_channels=12, v_channels=36,
          d_latents=36), (5, 7)),
]


@pytest.mark.parametrize("overrides, image", IMAGE_CASES)
def test_image_fourier_head(overrides, image):
    hf, ours = convert("PerceiverForImageClassificationFourier", hf_config(**overrides), image_shape=image)
    pixels, mask = torch.randn(3, 3, *image), padding_mask(3, image[0] * image[1])
    with torch.no_grad():
        assert relative_error(hf(inputs=pixels, attention_mask=mask).logits,
                              ours(pixels, attention_mask=mask).logits) < 1e-4


@pytest.mark.parametrize("overrides, size", [(ENCODERS[0], 4), (IMAGE_CASES[1][0], 6), (ENCODERS[3], 5)])
def test_image_learned_head(overrides, size):
    """1x1 conv to 256 channels, a learned table of 256 projected by a linear layer."""
    hf, ours = convert("PerceiverForImageClassificationLearned", hf_config(image_size=size, **overrides))
    pixels, mask = torch.randn(3, 3, size, size), padding_mask(3, size * size)
    with torch.no_grad():
        assert relative_error(hf(inputs=pixels, attention_mask=mask).logits,
                              ours(pixels, attention_mask=mask).logits) < 1e-4


@pytest.mark.parametrize("overrides, image", [(ENCODERS[0], (32, 40)), (IMAGE_CASES[2][0], (17, 23)),
                                              (ENCODERS[2], (224, 224))])
def test_image_conv_head(overrides, image):
    """Conv stem with BatchNorm (eval statistics) and transformers' padding: 224 -> 55 x 55."""
    hf, ours = convert("PerceiverForImageClassificationConvProcessing", hf_config(**overrides),
                       image_shape=image)
    pixels = torch.randn(3, 3, *image)
    mask = padding_mask(3, ours.input_adapter.num_positions)
    with torch.no_grad():
        assert relative_error(hf(inputs=pixels, attention_mask=mask).logits,
                              ours(pixels, attention_mask=mask).logits) < 1e-4
    if image == (224, 224):
        assert ours.input_adapter.num_positions == 55 * 55


@pytest.mark.parametrize("overrides, size", [(ENCODERS[0], (6, 8)), (ENCODERS[1], (5, 7)),
                                             (ENCODERS[3], (4, 4))])
def test_optical_flow_head(overrides, size):
    """Two frames of 3x3 patches (27 channels) -> flow [B, H, W, 2]; the inputs are the queries."""
    hf, ours = convert("PerceiverForOpticalFlow", hf_config(train_size=list(size), **overrides))
    frames, mask = torch.randn(2, 2, 27, *size), padding_mask(2, size[0] * size[1])
    with torch.no_grad():
        expected = hf(inputs=frames, attention_mask=mask).logits
        assert relative_error(expected, ours(frames, attention_mask=mask).logits) < 1e-4
    assert expected.shape == (2, *size, 2)


MULTIMODAL = [  # (config overrides, frames, image size, audio samples per frame)
    (dict(samples_per_patch=8, output_num_channels=16, _label_trainable_num_channels=20), 2, 8, 32),
    (dict(ENCODERS[1], samples_per_patch=4, output_num_channels=24, _label_trainable_num_channels=7,
          num_labels=9), 3, 4, 8),
    (dict(ENCODERS[3], samples_per_patch=16, output_num_channels=8, _label_trainable_num_channels=300),
     4, 8, 16),
]


def multimodal(overrides, frames, size, samples):
    config = hf_config(num_frames=frames, image_size=size, output_shape=[1, frames, size, size],
                       audio_samples_per_frame=samples, **overrides)
    return convert("PerceiverForMultimodalAutoencoding", config)


@pytest.mark.parametrize("overrides, frames, size, samples", MULTIMODAL)
def test_multimodal_autoencoder_head(overrides, frames, size, samples):
    """Same ``inputs`` dict; transformers' ``subsampled_output_points`` are our ``query_index``."""
    hf, ours = multimodal(overrides, frames, size, samples)
    config = hf.config
    inputs = dict(image=torch.randn(2, frames, 3, size, size), audio=torch.randn(2, frames * samples, 1),
                  label=torch.nn.functional.one_hot(torch.tensor([1, 3]), config.num_labels).float())
    num_patches = frames * samples // config.samples_per_patch
    points = dict(image=torch.randperm(frames * size * size)[:11], audio=torch.randperm(num_patches)[:5],
                  label=None)
    mask = padding_mask(2, num_patches + frames * size * size // 16 + 1)
    with torch.no_grad():
        expected = hf(inputs=inputs, attention_mask=mask, subsampled_output_points=points).logits
        got = ours(inputs, attention_mask=mask, query_index=points).logits
    assert sorted(got) == ["audio", "image", "label"]
    for name in expected:
        assert relative_error(expected[name], got[name]) < 1e-4
    assert got["audio"].shape == (2, len(points["audio"]) * config.samples_per_patch)
    assert got["image"].shape == (2, 11, 3)


def test_multimodal_autoencoder_official_configuration():
    """Kinetics sizes (16 x 224 x 224 video, 30,720 audio samples, 700 labels) with a small latent
    array: the Fourier phases reach pi * 15,360, where only float32 rounding as transformers'
    reproduces the logits."""
    config = transformers.PerceiverConfig(num_latents=16, d_latents=64, num_self_attends_per_block=1,
                                          num_labels=700, num_cross_attention_heads=1,
                                          num_self_attention_heads=2, attention_probs_dropout_prob=0.0)
    hf, ours = convert("PerceiverForMultimodalAutoencoding", config)
    inputs = dict(image=torch.randn(1, 16, 3, 224, 224), audio=torch.randn(1, 30720, 1),
                  label=torch.zeros(1, 700))
    chunk = 93  # of 128, as in the paper's chunked decoding
    points = dict(image=torch.arange(6272 * chunk, 6272 * (chunk + 1)),
                  audio=torch.arange(15 * chunk, 15 * (chunk + 1)), label=None)
    with torch.no_grad():
        expected = hf(inputs=inputs, subsampled_output_points=points).logits
        got = ours(inputs, query_index=points).logits
    for name in expected:
        assert relative_error(expected[name], got[name]) < 1e-4
    assert got["image"].shape == (1, 6272, 3) and got["audio"].shape == (1, 240)


def test_loads_a_saved_transformers_directory(tmp_path):
    hf = randomized(transformers.PerceiverForSequenceClassification(hf_config()))
    hf.save_pretrained(tmp_path)
    ours = from_transformers(str(tmp_path)).eval()
    ids, mask = torch.randint(0, 262, (3, 48)), padding_mask(3, 48)
    with torch.no_grad():
        assert relative_error(hf(inputs=ids, attention_mask=mask).logits,
                              ours(ids, attention_mask=mask).logits) < 1e-4


def test_jax_behaviour_keeps_the_weights_and_switches_gelu_and_padding():
    hf = randomized(transformers.PerceiverForImageClassificationConvProcessing(hf_config()))
    ours = from_transformers(hf, image_shape=(224, 224))
    jax = from_transformers(hf, image_shape=(224, 224), match="jax").eval()
    assert jax.config.encoder.activation == jax.config.decoder.activation == "gelu_tanh"
    assert jax.input_adapter.num_positions == 56 * 56  # SAME padding (tests/inputs/test_image.py)
    assert all(torch.equal(value, jax.state_dict()[key]) for key, value in ours.state_dict().items())
    with pytest.raises(ValueError, match="match: expected 'transformers' or 'jax', got 'tf'"):
        from_transformers(hf, match="tf")
