import pytest
import torch

from perceiver.inputs import AudioPatchAdapter, ImagePatchAdapter, MultimodalAdapter, OneHotLabelAdapter


def make():
    return MultimodalAdapter(MultimodalAdapter.Config(modalities={
        "label": OneHotLabelAdapter.Config(10),
        "image": ImagePatchAdapter.Config((4, 4), 1, patch_size=2, num_bands=2),
        "audio": AudioPatchAdapter.Config(num_samples=32, samples_per_patch=8, num_bands=3),
    }))


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


def test_bad_modalities():
    adapter = make()
    with pytest.raises(ValueError, match=r"inputs: unknown modalities \['video'\]"):
        adapter({"video": torch.randn(2, 3)})
    with pytest.raises(ValueError, match="inputs: expected a dict"):
        adapter(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"inputs\['image'\]: expected batch size \[3\], got \[2\]"):
        adapter({"image": torch.randn(2, 1, 4, 4), "audio": torch.randn(3, 32)})
