import pytest
import torch
import torch.nn.functional as F

from perceiver.inputs import Conv1x1Adapter, ConvStemAdapter, ImageFourierAdapter, ImagePatchAdapter
from perceiver.inputs.image import same_padding
from perceiver.positions import fourier_features


def test_pixels_with_fourier_features():
    adapter = ImageFourierAdapter(ImageFourierAdapter.Config((4, 5), 3, num_bands=6,
                                                             max_resolution=(224, 224)))
    img = torch.randn(2, 3, 4, 5)
    x, _ = adapter(img)
    assert x.shape == (2, 20, 3 + 2 * 2 * 6 + 2) and adapter.output_dim == x.shape[-1]
    torch.testing.assert_close(x[1, 5 + 2, :3], img[1, :, 1, 2])  # pixel (row 1, col 2)
    torch.testing.assert_close(x[0, :, 3:], fourier_features((4, 5), 6, (224, 224)))


def test_patches_are_space_to_depth():
    adapter = ImagePatchAdapter(ImagePatchAdapter.Config((4, 6), 2, patch_size=2, num_bands=3))
    img = torch.randn(1, 2, 4, 6)
    x, _ = adapter(img)
    assert x.shape == (1, 6, 2 * 2 * 2 + 2 * 2 * 3 + 2)
    patch = img[0, :, 2:4, 4:6]  # patch (row 1, col 2) -> index 1 * 3 + 2
    torch.testing.assert_close(x[0, 5, :8], patch.permute(1, 2, 0).reshape(-1))
    with pytest.raises(ValueError, match="patch_size: expected a divisor"):
        ImagePatchAdapter(ImagePatchAdapter.Config((5, 6), 2, patch_size=2))


def test_same_padding_matches_tensorflow():
    assert same_padding(224, 7, 2) == (2, 3)  # 224 -> 112
    assert same_padding(112, 3, 2) == (0, 1)  # 112 -> 56
    assert same_padding(5, 1, 1) == (0, 0)


def test_conv_stem_downsamples_by_four_like_jax():
    adapter = ConvStemAdapter(ConvStemAdapter.Config((224, 224), 3, out_channels=8, num_bands=4)).eval()
    x, _ = adapter(torch.randn(1, 3, 224, 224))
    assert x.shape == (1, 56 * 56, 8 + 2 * 2 * 4 + 2)  # transformers' stem gives 55 x 55 here
    img = torch.randn(2, 3, 9, 10)
    small = ConvStemAdapter(ConvStemAdapter.Config((9, 10), 3, out_channels=4, num_bands=2)).eval()
    got, _ = small(img)
    # independent: SAME pads (top, bottom) = (3, 3) for H 9 -> 5, (left, right) = (2, 3) for W 10 -> 5
    h = F.relu(small.norm(F.conv2d(F.pad(img, [2, 3, 3, 3]), small.conv.weight, stride=2)))
    h = F.max_pool2d(F.pad(h, [1, 1, 1, 1], value=float("-inf")), 3, stride=2)
    torch.testing.assert_close(got[..., :4], h.flatten(2).transpose(1, 2))


def test_conv_stem_transformers_padding():
    config = ConvStemAdapter.Config((224, 224), 3, out_channels=8, num_bands=4, padding="transformers")
    assert ConvStemAdapter(config).num_positions == 55 * 55
    img = torch.randn(2, 3, 11, 8)
    small = ConvStemAdapter(ConvStemAdapter.Config((11, 8), 3, out_channels=4, num_bands=2,
                                                   padding="transformers", max_resolution=(9, 9))).eval()
    got, _ = small(img)
    h = F.relu(small.norm(F.conv2d(img, small.conv.weight, stride=2, padding=3)))  # 11x8 -> 6x4
    h = F.max_pool2d(h, 3, stride=2)  # -> 2x1
    assert got.shape == (2, 2, 4 + 2 * 2 * 2 + 2)
    torch.testing.assert_close(got[..., :4], h.flatten(2).transpose(1, 2))
    torch.testing.assert_close(got[0, :, 4:], fourier_features((2, 1), 2, (9, 9)))
    with pytest.raises(ValueError, match="padding: expected 'same' or 'transformers', got 'valid'"):
        ConvStemAdapter(ConvStemAdapter.Config((8, 8), padding="valid"))


def test_conv1x1_with_projected_positions():
    adapter = Conv1x1Adapter(Conv1x1Adapter.Config((2, 3), 3, out_channels=5, position_dim=4,
                                                   project_positions=True))
    x, _ = adapter(torch.randn(2, 3, 2, 3))
    projection = adapter.position_projection
    torch.testing.assert_close(x[1, :, 5:], adapter.positions.table @ projection.weight.T + projection.bias)


def test_conv1x1_with_learned_positions():
    adapter = Conv1x1Adapter(Conv1x1Adapter.Config((3, 3), 3, out_channels=5, position_dim=4))
    img = torch.randn(2, 3, 3, 3)
    x, _ = adapter(img)
    expected = torch.einsum("oc,bchw->bhwo", adapter.conv.weight[:, :, 0, 0], img) + adapter.conv.bias
    torch.testing.assert_close(x[..., :5], expected.reshape(2, 9, 5))
    torch.testing.assert_close(x[1, :, 5:], adapter.positions.table)


@pytest.mark.parametrize("img, message", [
    (torch.randn(2, 3, 4, 4), r"inputs: expected shape \[B, C, H, W\] ending in \[3, 4, 5\]"),
    (torch.randn(3, 4, 5), "inputs: expected a 4-D tensor"),
    (torch.zeros(1, 3, 4, 5, dtype=torch.long), "inputs: expected a floating-point tensor"),
])
def test_bad_images(img, message):
    adapter = ImageFourierAdapter(ImageFourierAdapter.Config((4, 5), 3, num_bands=2))
    with pytest.raises(ValueError, match=message):
        adapter(img)
