"""Video inputs ``[B, T, C, H, W]``: space-time patches with Fourier features of the patch grid.

Used for video autoencoding (16 frames in 1 x 4 x 4 patches) and for optical flow (two frames,
each pixel carrying its 3 x 3 neighbourhood, stacked in 2 x 1 x 1 patches and projected to 64
channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from einops import rearrange
from torch import Tensor, nn

from perceiver.config import register
from perceiver.inputs.base import check_size, check_tensor, concat_positions
from perceiver.positions import FourierPositions


@register("video_patches")
class VideoPatchAdapter(nn.Module):
    """``[B, T, C, H, W] -> [B, T'*H'*W', F + P]`` with ``T' = T / temporal_patch`` and
    ``H' = H / spatial_patch`` (likewise W').

    Patch features are ordered (time, row, column, channel), ``F = t*p*p*C``, or
    ``projection_dim`` after an optional linear layer. Positions are Fourier features of the grid
    ``(T', H', W')``, or of ``(H', W')`` when ``T' = 1`` (optical flow); ``max_resolution`` (one
    value per grid dimension) defaults to that grid.
    """

    @dataclass
    class Config:
        frames_shape: tuple[int, int, int] = (16, 224, 224)  # (T, H, W)
        in_channels: int = 3
        temporal_patch: int = 1
        spatial_patch: int = 4
        projection_dim: int | None = None
        num_bands: int = 32
        max_resolution: tuple[int, ...] | None = None

    def __init__(self, config: Config):
        super().__init__()
        t, h, w = config.frames_shape
        dt, p = config.temporal_patch, config.spatial_patch
        if t % dt or h % p or w % p:
            raise ValueError(f"temporal_patch, spatial_patch: expected divisors of frames_shape "
                             f"{config.frames_shape}, got {dt}, {p}")
        self.config = config
        grid = (t // dt, h // p, w // p)
        grid = grid[1:] if grid[0] == 1 else grid
        self.positions = FourierPositions(grid, config.num_bands, config.max_resolution)
        features = dt * p * p * config.in_channels
        self.projection = None
        if config.projection_dim is not None:
            self.projection = nn.Linear(features, config.projection_dim)
            features = config.projection_dim
        self.output_dim = features + self.positions.num_channels
        self.num_positions = math.prod(grid)

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        check_tensor("inputs", inputs, 5, floating=True)
        t, h, w = self.config.frames_shape
        check_size("inputs", inputs.shape[1:], (t, self.config.in_channels, h, w),
                   "shape [B, T, C, H, W] ending in")
        p = self.config.spatial_patch
        x = rearrange(inputs, "b (t dt) c (h dh) (w dw) -> b (t h w) (dt dh dw c)",
                      dt=self.config.temporal_patch, dh=p, dw=p)
        if self.projection is not None:
            x = self.projection(x)
        return concat_positions(x, self.positions()), attention_mask
