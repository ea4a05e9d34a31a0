"""Image inputs ``[B, C, H, W]``: pixels, patches, a conv stem or a 1x1 conv, each with positions.

All produce ``[B, M, features + position channels]`` with M the row-major grid of pixels/patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from perceiver.config import register
from perceiver.inputs.base import check_size, check_tensor, concat_positions
from perceiver.positions import FourierPositions, LearnedPositions


def _check_image(inputs: Tensor, channels: int, image_shape) -> None:
    check_tensor("inputs", inputs, 4, floating=True)
    check_size("inputs", inputs.shape[1:], (channels, *image_shape), "shape [B, C, H, W] ending in")


@register("image_fourier")
class ImageFourierAdapter(nn.Module):
    """Raw pixels with 2-D Fourier features: ``[B, C, H, W] -> [B, H*W, C + 4K + 2]``."""

    @dataclass
    class Config:
        image_shape: tuple[int, int] = (224, 224)
        in_channels: int = 3
        num_bands: int = 64
        max_resolution: tuple[int, int] | None = None  # defaults to image_shape

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.positions = FourierPositions(config.image_shape, config.num_bands, config.max_resolution)
        self.output_dim = config.in_channels + self.positions.num_channels
        self.num_positions = math.prod(config.image_shape)

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        _check_image(inputs, self.config.in_channels, self.config.image_shape)
        x = rearrange(inputs, "b c h w -> b (h w) c")
        return concat_positions(x, self.positions()), attention_mask


@register("image_patches")
class ImagePatchAdapter(nn.Module):
    """Non-overlapping p x p patches (space-to-depth) with Fourier features of the patch grid.

    ``[B, C, H, W] -> [B, (H/p)(W/p), p*p*C + 4K + 2]``; patch channels ordered (row, col, channel).
    """

    @dataclass
    class Config:
        image_shape: tuple[int, int] = (224, 224)
        in_channels: int = 3
        patch_size: int = 4
        num_bands: int = 64

    def __init__(self, config: Config):
        super().__init__()
        h, w = config.image_shape
        p = config.patch_size
        if h % p or w % p:
            raise ValueError(f"patch_size: expected a divisor of image_shape {config.image_shape}, got {p}")
        self.config = config
        self.positions = FourierPositions((h // p, w // p), config.num_bands)
        self.output_dim = p * p * config.in_channels + self.positions.num_channels
        self.num_positions = (h // p) * (w // p)

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        _check_image(inputs, self.config.in_channels, self.config.image_shape)
        p = self.config.patch_size
        x = rearrange(inputs, "b c (h dh) (w dw) -> b (h w) (dh dw c)", dh=p, dw=p)
        return concat_positions(x, self.positions()), attention_mask


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/JAX 'SAME' padding (before, after) for one dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _stem_grid(size: int, padding: str) -> int:
    if padding == "same":
        return math.ceil(math.ceil(size / 2) / 2)
    conv = (size - 1) // 2 + 1  # 7x7/2 conv, 3 zeros each side
    return (conv - 3) // 2 + 1  # 3x3/2 max-pool, unpadded


@register("image_conv_stem")
class ConvStemAdapter(nn.Module):
    """Conv 7x7/2 + BatchNorm + ReLU + max-pool 3x3/2, then Fourier features of the downsampled
    grid: ``[B, C, H, W] -> [B, H'*W', out + 4K + 2]``.

    ``padding="same"`` is TensorFlow/JAX 'SAME' padding, as in DeepMind's code (224 -> 56 x 56);
    ``"transformers"`` reproduces transformers' port (3 zeros on every side of the conv, no padding
    in the max-pool: 224 -> 55 x 55). ``max_resolution`` defaults to the downsampled grid
    (transformers fixes it at 56 x 56).
    """

    @dataclass
    class Config:
        image_shape: tuple[int, int] = (224, 224)
        in_channels: int = 3
        out_channels: int = 64
        num_bands: int = 64
        padding: str = "same"
        max_resolution: tuple[int, int] | None = None

    def __init__(self, config: Config):
        super().__init__()
        if config.padding not in ("same", "transformers"):
            raise ValueError(f"padding: expected 'same' or 'transformers', got {config.padding!r}")
        self.config = config
        self.conv = nn.Conv2d(config.in_channels, config.out_channels, 7, stride=2, bias=False)
        self.norm = nn.BatchNorm2d(config.out_channels)
        grid = tuple(_stem_grid(n, config.padding) for n in config.image_shape)
        self.positions = FourierPositions(grid, config.num_bands, config.max_resolution)
        self.output_dim = config.out_channels + self.positions.num_channels
        self.num_positions = math.prod(grid)

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        _check_image(inputs, self.config.in_channels, self.config.image_shape)
        same = self.config.padding == "same"
        (h, w) = inputs.shape[-2:]
        x = F.pad(inputs, [*same_padding(w, 7, 2), *same_padding(h, 7, 2)] if same else [3] * 4)
        x = F.relu(self.norm(self.conv(x)))
        if same:
            (h, w) = x.shape[-2:]
            x = F.pad(x, [*same_padding(w, 3, 2), *same_padding(h, 3, 2)], value=float("-inf"))
        x = rearrange(F.max_pool2d(x, 3, stride=2), "b c h w -> b (h w) c")
        return concat_positions(x, self.positions()), attention_mask


@register("image_conv1x1")
class Conv1x1Adapter(nn.Module):
    """A 1x1 convolution to ``out_channels`` with learned positions of width ``position_dim``
    appended: ``[B, C, H, W] -> [B, H*W, out_channels + position_dim]``. With
    ``project_positions`` the table passes through a linear layer first (DeepMind's
    learned-position ImageNet model)."""

    @dataclass
    class Config:
        image_shape: tuple[int, int] = (224, 224)
        in_channels: int = 3
        out_channels: int = 256
        position_dim: int = 256
        project_positions: bool = False

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(config.in_channels, config.out_channels, kernel_size=1)
        self.num_positions = math.prod(config.image_shape)
        self.positions = LearnedPositions(self.num_positions, config.position_dim)
        dim = config.position_dim
        self.position_projection = nn.Linear(dim, dim) if config.project_positions else nn.Identity()
        self.output_dim = config.out_channels + config.position_dim

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        _check_image(inputs, self.config.in_channels, self.config.image_shape)
        x = rearrange(self.conv(inputs), "b c h w -> b (h w) c")
        return concat_positions(x, self.position_projection(self.positions())), attention_mask
