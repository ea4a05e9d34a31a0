import pytest
import torch

from perceiver.inputs import VideoPatchAdapter
from perceiver.positions import fourier_features


def test_space_time_patches_and_grid_positions():
    config = VideoPatchAdapter.Config((4, 6, 8), 3, temporal_patch=2, spatial_patch=2, num_bands=3,
                                      max_resolution=(4, 12, 16))
    adapter = VideoPatchAdapter(config)
    video = torch.randn(2, 4, 3, 6, 8)
    x, _ = adapter(video)
    assert x.shape == (2, 2 * 3 * 4, 2 * 2 * 2 * 3 + 3 * 2 * 3 + 3) == (2, 24, adapter.output_dim)
    # patch (t 1, row 2, col 3): frames 2..3, rows 4..5, cols 6..7; features (time, row, col, channel)
    patch = video[1, 2:4, :, 4:6, 6:8].permute(0, 2, 3, 1).reshape(-1)
    torch.testing.assert_close(x[1, 1 * 12 + 2 * 4 + 3, :24], patch)
    torch.testing.assert_close(x[0, :, 24:], fourier_features((2, 3, 4), 3, (4, 12, 16)))


def test_two_frames_for_optical_flow_have_2d_positions_and_a_projection():
    config = VideoPatchAdapter.Config((2, 5, 7), 27, temporal_patch=2, spatial_patch=1,
                                      projection_dim=16, num_bands=4, max_resolution=(10, 14))
    adapter = VideoPatchAdapter(config)
    frames = torch.randn(3, 2, 27, 5, 7)
    x, _ = adapter(frames)
    assert x.shape == (3, 35, 16 + 2 * 2 * 4 + 2)
    stacked = frames[2, :, :, 4, 1].reshape(-1)  # pixel (4, 1): frame 0's 27 channels, then frame 1's
    torch.testing.assert_close(x[2, 4 * 7 + 1, :16], adapter.projection(stacked))
    torch.testing.assert_close(x[0, :, 16:], fourier_features((5, 7), 4, (10, 14)))


def test_bad_video():
    with pytest.raises(ValueError, match="expected divisors of frames_shape"):
        VideoPatchAdapter(VideoPatchAdapter.Config((3, 8, 8), temporal_patch=2))
    adapter = VideoPatchAdapter(VideoPatchAdapter.Config((2, 8, 8), 3, spatial_patch=4, num_bands=2))
    message = r"inputs: expected shape \[B, T, C, H, W\] ending in \[2, 3, 8, 8\]"
    with pytest.raises(ValueError, match=message):
        adapter(torch.randn(1, 2, 3, 8, 4))
    with pytest.raises(ValueError, match="inputs: expected a 5-D tensor"):
        adapter(torch.randn(2, 3, 8, 8))
