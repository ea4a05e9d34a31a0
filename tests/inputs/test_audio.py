import pytest
import torch

from perceiver.inputs import AudioPatchAdapter, LogMelAdapter
from perceiver.positions import fourier_features


def test_sample_patches_with_1d_fourier():
    adapter = AudioPatchAdapter(AudioPatchAdapter.Config(num_samples=64, samples_per_patch=16,
                                                         num_bands=5))
    wav = torch.randn(2, 64)
    x, _ = adapter(wav)
    assert x.shape == (2, 4, 16 + 2 * 5 + 1)
    torch.testing.assert_close(x[1, 2, :16], wav[1, 32:48])
    torch.testing.assert_close(x[0, :, 16:], fourier_features(4, 5))
    torch.testing.assert_close(adapter(wav[..., None])[0], x)  # [B, T, 1] is accepted
    with pytest.raises(ValueError, match=r"inputs: expected samples per example \[64\], got \[63\]"):
        adapter(torch.randn(2, 63))


def test_log_mel_frames():
    torchaudio = pytest.importorskip("torchaudio")
    cfg = LogMelAdapter.Config(num_samples=1600, sample_rate=16000, n_fft=256, hop_length=160,
                               n_mels=20, num_bands=3)
    adapter = LogMelAdapter(cfg)
    wav = torch.randn(2, 1600)
    x, _ = adapter(wav)
    assert x.shape == (2, 11, 20 + 7) and adapter.num_positions == 11
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=256, hop_length=160, n_mels=20)(wav)
    torch.testing.assert_close(x[..., :20], torch.log(mel + 1e-6).transpose(1, 2))
