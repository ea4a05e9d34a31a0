"""Audio inputs: raw sample patches with 1-D Fourier features, or log-mel spectrogram frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from perceiver.config import register
from perceiver.inputs.base import check_size, check_tensor, concat_positions
from perceiver.positions import FourierPositions


def _check_audio(inputs: Tensor, num_samples: int) -> Tensor:
    """Accept ``[B, T]`` or ``[B, T, 1]`` float audio; return ``[B, T]``."""
    check_tensor("inputs", inputs, (2, 3), floating=True)
    if inputs.dim() == 3:
        check_size("inputs", inputs.shape[2:], (1,), "mono audio [B, T, 1] ending in")
        inputs = inputs[..., 0]
    check_size("inputs", inputs.shape[1:], (num_samples,), "samples per example")
    return inputs


@register("audio_patches")
class AudioPatchAdapter(nn.Module):
    """Raw samples in patches of ``samples_per_patch`` with 1-D Fourier features of patch index:
    ``[B, T] -> [B, T/p, p + 2K + 1]``."""

    @dataclass
    class Config:
        num_samples: int = 30720
        samples_per_patch: int = 16
        num_bands: int = 192
        max_resolution: int | None = None  # defaults to the number of patches

    def __init__(self, config: Config):
        super().__init__()
        if config.num_samples % config.samples_per_patch:
            raise ValueError(f"samples_per_patch: expected a divisor of num_samples="
                             f"{config.num_samples}, got {config.samples_per_patch}")
        self.config = config
        self.num_positions = config.num_samples // config.samples_per_patch
        res = None if config.max_resolution is None else (config.max_resolution,)
        self.positions = FourierPositions(self.num_positions, config.num_bands, res)
        self.output_dim = config.samples_per_patch + self.positions.num_channels

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        x = _check_audio(inputs, self.config.num_samples)
        x = rearrange(x, "b (m p) -> b m p", p=self.config.samples_per_patch)
        return concat_positions(x, self.positions()), attention_mask


@register("audio_log_mel")
class LogMelAdapter(nn.Module):
    """Log-mel spectrogram frames (torchaudio) with 1-D Fourier features of the frame index:
    ``[B, T] -> [B, frames, n_mels + 2K + 1]``, frames = ``T // hop_length + 1``."""

    @dataclass
    class Config:
        num_samples: int = 16000
        sample_rate: int = 16000
        n_fft: int = 400
        hop_length: int = 160
        n_mels: int = 64
        num_bands: int = 32

    def __init__(self, config: Config):
        super().__init__()
        import torchaudio  # imported here: only this adapter needs it

        self.config = config
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate, n_fft=config.n_fft,
            hop_length=config.hop_length, n_mels=config.n_mels,
        )
        self.num_positions = config.num_samples // config.hop_length + 1
        self.positions = FourierPositions(self.num_positions, config.num_bands)
        self.output_dim = config.n_mels + self.positions.num_channels

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        x = _check_audio(inputs, self.config.num_samples)
        mel = torch.log(self.melspec(x.float()) + 1e-6).to(x.dtype)  # [B, n_mels, frames]
        x = rearrange(mel, "b f t -> b t f")
        return concat_positions(x, self.positions()), attention_mask
