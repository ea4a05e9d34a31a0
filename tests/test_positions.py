import math

import numpy as np
import pytest
import torch

from perceiver.positions import FourierPositions, LearnedPositions, fourier_channels, fourier_features


def numpy_fourier(index_dims, num_bands, max_resolution, concat_pos=True, sine_only=False, endpoint=True):
    """The DeepMind formula written out point by point."""
    rows = []
    for point in np.ndindex(*index_dims):
        if endpoint:
            x = [-1 + 2 * p / (n - 1) if n > 1 else -1.0 for p, n in zip(point, index_dims, strict=True)]
        else:
            x = [-1 + 2 * p / n for p, n in zip(point, index_dims, strict=True)]
        sines, cosines = [], []
        for xi, res in zip(x, max_resolution, strict=True):
            for f in np.linspace(1.0, res / 2, num_bands):
                sines.append(math.sin(math.pi * f * xi))
                cosines.append(math.cos(math.pi * f * xi))
        rows.append((x if concat_pos else []) + sines + ([] if sine_only else cosines))
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("dims, bands, res", [((7,), 5, None), ((4, 6), 3, (224, 224)),
                                             ((3, 4, 5), 2, (8, 9, 10)), ((1, 5), 4, None)])
@pytest.mark.parametrize("concat_pos, sine_only", [(True, False), (False, True), (True, True)])
def test_fourier_features_exact_formula(dims, bands, res, concat_pos, sine_only):
    got = fourier_features(dims, bands, res, concat_pos=concat_pos, sine_only=sine_only)
    expected = numpy_fourier(dims, bands, res or dims, concat_pos, sine_only)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert got.shape == (math.prod(dims), fourier_channels(len(dims), bands, concat_pos, sine_only))


def test_imagenet_width_and_linear_bands():
    feats = fourier_features((224, 224), 64)
    assert feats.shape == (224 * 224, 258)
    # position (row 0, col 1) -> x = (-1, -1 + 2/223); the band frequencies are linear 1..112
    x1 = -1 + 2 / 223
    torch.testing.assert_close(feats[1, 2 + 64 + 63], torch.tensor(math.sin(math.pi * 112 * x1)))


def test_matches_transformers_generate_fourier_features():
    mp = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    pos = mp.build_linear_positions((6, 9)).reshape(1, -1, 2)
    theirs = mp.generate_fourier_features(pos, 11, max_resolution=(224, 224))[0]
    # transformers works in float32: at frequency 112 the phase pi*112*x (~352) is off by ~2e-5.
    torch.testing.assert_close(fourier_features((6, 9), 11, (224, 224)), theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dims, res", [((9,), (40,)), ((2, 3, 5), (2, 12, 20))])
def test_half_open_positions_of_deepmind_subsampled_queries(dims, res):
    """``endpoint=False``: position i is -1 + 2 i / n, as DeepMind's subsampled decoder queries."""
    expected = numpy_fourier(dims, 6, res, endpoint=False)
    torch.testing.assert_close(fourier_features(dims, 6, res, endpoint=False), expected, atol=1e-6, rtol=0)
    index = torch.tensor([5, 0, 7])
    torch.testing.assert_close(FourierPositions(dims, 6, res, endpoint=False)(index), expected[index])


def test_subset_equals_rows_of_full_grid():
    full = fourier_features((5, 7), 4)
    index = torch.tensor([34, 0, 12, 12, 3])
    torch.testing.assert_close(fourier_features((5, 7), 4, index=index), full[index])
    module = FourierPositions((5, 7), 4)
    torch.testing.assert_close(module(index), full[index])
    with pytest.raises(ValueError, match=r"index: expected values in \[0, 35\)"):
        fourier_features((5, 7), 4, index=torch.tensor([35]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_resolution: expected 2 values"):
        fourier_features((4, 4), 3, max_resolution=(4,))
    with pytest.raises(ValueError, match="index_dims: expected positive sizes"):
        fourier_features((0, 4), 3)
    with pytest.raises(ValueError, match="query_index: expected values in"):
        LearnedPositions(4, 2)(torch.tensor([4]))
