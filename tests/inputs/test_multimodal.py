import pytest
import torch

from perceiver.inputs import AudioPatchAdapter, ImagePatchAdapter, MultimodalAdapter, OneHotLabelAdapter


def make(**options):
    return MultimodalAdapter(MultimodalAdapter.Config(modalities={
        "label": OneHotLabelAdapter.Config(10),
        "image": ImagePatchAdapter.Config((4, 4), 1, patch_size=2, num_bands=2),
        "audio": AudioPatchAdapter.Config(num_samples=32, samples_per_patch=8, num_bands=3),
    }, **options))


def test_padding_and_sorted_concatenation():
    adapter = make()
    assert adapter.names == ["audio", "image", "label"]
    widths = {n: a.output_dim for n, a in adapter.adapters.items()}  # audio 15, image 14, label 10
    assert adapter.output_dim == max(widths.values()) + 2
    inputs = {"image": torch.randn(2, 1, 4, 4), "audio": torch.randn(2, 32), "label": torch.tensor([1, 7])}
    x, _ = adapter(inputs)
    assert x.shape == (2, 4 + 4 + 1, adapter.output_dim)
    audio, _ = adapter.adapters["audio"](inputs["audio"])
    torch.testing.assert_close(x[:, :4, :15], audio)
    torch.testing.assert_close(x[0, :4, 15:], adapter.padding["audio"].expand(4, -1))
    torch.testing.assert_close(x[1, 8, :10], torch.eye(10)[7])  # label comes last
    torch.testing.assert_close(x[1, 8, 10:], adapter.padding["label"])


def test_masking_with_learned_mask_token():
    adapter = make()
    inputs = {"image": torch.randn(2, 1, 4, 4), "audio": torch.randn(2, 32)}
    x, _ = adapter(inputs)  # label left out: masked for every example
    torch.testing.assert_close(x[:, 8], adapter.mask_tokens["label"].expand(2, -1))
    full = dict(inputs, label=torch.tensor([3, 4]))
    y, _ = adapter(full, modality_mask={"label": torch.tensor([True, False])})
    torch.testing.assert_close(y[0, 8], adapter.mask_tokens["label"])
    torch.testing.assert_close(y[1, :8], adapter(full)[0][1, :8])
    assert y[1, 8, 4] == 1.0


def test_mask_probs_mask_elements_at_that_rate_in_train_and_eval():
    adapter = make(mask_probs={"label": 1.0, "image": 0.5, "audio": 0.0}).eval()
    inputs = {"image": torch.randn(400, 1, 4, 4), "audio": torch.randn(400, 32),
              "label": torch.zeros(400, 10)}
    unmasked = make()
    unmasked.load_state_dict(adapter.state_dict())
    x, reference = adapter(inputs)[0], unmasked(inputs)[0]
    torch.testing.assert_close(x[:, 8], adapter.mask_tokens["label"].expand(400, -1))  # always masked
    torch.testing.assert_close(x[:, :4], reference[:, :4])  # never masked
    image_masked = (x[:, 4:8] == adapter.mask_tokens["image"]).all(-1)
    assert torch.equal(image_masked, ~(x[:, 4:8] == reference[:, 4:8]).all(-1))
    assert 0.45 < image_masked.float().mean() < 0.55  # 1,600 Bernoulli(0.5) draws
    with pytest.raises(ValueError, match="mask_probs: expected probabilities in .* got 'label': 1.5"):
        make(mask_probs={"label": 1.5})


def test_bad_modalities():
    adapter = make()
    with pytest.raises(ValueError, match=r"inputs: unknown modalities \['video'\]"):
        adapter({"video": torch.randn(2, 3)})
    with pytest.raises(ValueError, match="inputs: expected a dict"):
        adapter(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"inputs\['image'\]: expected batch size \[3\], got \[2\]"):
        adapter({"image": torch.randn(2, 1, 4, 4), "audio": torch.randn(3, 32)})


def test_multimodal_arguments_of_the_wrong_kind_are_named():
    from tests.test_model import av_batch, tiny_multimodal

    model = tiny_multimodal().eval()
    with pytest.raises(ValueError, match=r"query_index: expected a dict \{modality: index\}.* got Tensor"):
        model(av_batch(), query_index=torch.arange(3))
    with pytest.raises(ValueError, match=r"modality_mask: expected a dict \{modality: \[B\] bool\}.*Tensor"):
        model(av_batch(), modality_mask=torch.ones(2, dtype=torch.bool))
