import math

import numpy as np
import pytest
import torch

from perceiver.positions import FourierPositions, LearnedPositions, fourier_channels, fourier_features


def float32_tolerance(max_resolution):
    """float32 phases (DeepMind's rounding) are off the exact ones by a few ulps of the phase."""
    return 1e-6 + 4e-7 * math.pi * max(max_resolution) / 2


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
    torch.testing.assert_close(got, expected, atol=float32_tolerance(res or dims), rtol=0)
    assert got.shape == (math.prod(dims), fourier_channels(len(dims), bands, concat_pos, sine_only))


def test_imagenet_width_and_linear_bands():
    feats = fourier_features((224, 224), 64)
    assert feats.shape == (224 * 224, 258)
    # position (row 0, col 1) -> x = (-1, -1 + 2/223); the band frequencies are linear 1..112
    x1 = -1 + 2 / 223
    torch.testing.assert_close(feats[1, 2 + 64 + 63], torch.tensor(math.sin(math.pi * 112 * x1)))


@pytest.mark.parametrize("dims, bands, res", [((6, 9), 11, (224, 224)), ((1920,), 192, (30720,)),
                                             ((4, 56, 56), 32, (16, 224, 224))])
def test_bit_identical_to_transformers(dims, bands, res):
    """Same float32 rounding as transformers (and DeepMind's JAX code), also for subsampled queries
    where the phase reaches pi * 15,360 and float32 rounding moves it by ~1e-3."""
    mp = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    pos = mp.build_linear_positions(dims).reshape(1, -1, len(dims))
    theirs = mp.generate_fourier_features(pos, bands, max_resolution=res)[0]
    torch.testing.assert_close(fourier_features(dims, bands, res), theirs, atol=0, rtol=0)
    index = torch.randint(0, math.prod(dims), (300,))
    pos = torch.stack(torch.unravel_index(index, dims), dim=1)
    pos = -1 + 2 * pos / torch.tensor(dims)[None, :]  # transformers' subsampled decoder positions
    theirs = mp.generate_fourier_features(pos[None], bands, max_resolution=res)[0]
    torch.testing.assert_close(fourier_features(dims, bands, res, index=index, endpoint=False), theirs,
                               atol=0, rtol=0)


@pytest.mark.parametrize("dims, res", [((9,), (40,)), ((2, 3, 5), (2, 12, 20))])
def test_half_open_positions_of_deepmind_subsampled_queries(dims, res):
    """``endpoint=False``: position i is -1 + 2 i / n, as DeepMind's subsampled decoder queries."""
    expected = numpy_fourier(dims, 6, res, endpoint=False)
    got = fourier_features(dims, 6, res, endpoint=False)
    torch.testing.assert_close(got, expected, atol=float32_tolerance(res), rtol=0)
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


def test_learned_table_is_drawn_as_before_in_place():
    """Initialised in place (one [n, dim] allocation: a 16M x 256 table needs 17 GB, not 34), with
    the very values of ``randn(n, dim) * init_std`` under the same seed (checkpoints and seeded runs
    made before keep their starting points)."""
    torch.manual_seed(3)
    expected = torch.randn(7, 5) * 0.05
    torch.manual_seed(3)
    assert torch.equal(LearnedPositions(7, 5, init_std=0.05).table.detach(), expected)
