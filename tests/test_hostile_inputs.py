"""Hostile inputs, fuzzed with hypothesis: random shapes, dtypes, masks, NaN / infinite / huge
values, and corrupt or truncated files. Each either works (finite outputs of the right shape) or
raises a ValueError with a message; nothing else, and never a NaN."""

import io
import math
import wave

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from perceiver import presets
from perceiver.config import build
from perceiver.hip import build_hip

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.bool]
SPECIAL = [None, math.nan, math.inf, -math.inf, 1e30]

torch.manual_seed(0)
BYTES = build(presets.byte_classifier(num_classes=3, max_seq_len=32, dim=16, num_latents=4,
                                      latent_dim=16, num_layers=1, num_heads=2)).eval()
MULTIMODAL = build(presets.multimodal_autoencoder(
    image_shape=(8, 8), patch_size=2, num_samples=64, samples_per_patch=8, num_classes=3, num_bands=2,
    num_latents=4, latent_dim=16, num_layers=1, query_bands=2)).eval()
HIP = build_hip("mini", {"pixels": (16, 1), "tokens": (8, 5)}, num_groups=(4, 1, 4), num_latents=(4, 4, 4),
                channels=(8, 16, 8), num_self_layers=(1, 1, 1), num_self_heads=(1, 1, 1),
                embedding_channels=8).eval()


@st.composite
def tensors(draw, shape):
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=g).to(dtype)
        special = draw(st.sampled_from(SPECIAL))
        if special is not None and x.numel():
            x.view(-1)[draw(st.integers(0, x.numel() - 1))] = special
        return x
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    return torch.randint(0, 300, shape, generator=g).to(dtype)


def shapes(*dims):
    return st.tuples(*[st.integers(0, d) for d in dims])


def run(model, *args, **kwargs):
    """The model's outputs, or None when it refused the input with a ValueError."""
    try:
        with torch.no_grad():
            out = model(*args, **kwargs).logits
    except ValueError as error:
        assert str(error)
        return None
    return out if isinstance(out, dict) else {"logits": out}


def assert_finite(outputs):
    for name, value in outputs.items():
        assert torch.isfinite(value).all(), name


@FUZZ
@given(data=st.data(), shape=st.one_of(shapes(3, 40), shapes(3), shapes(3, 40, 2)),
       mask=st.sampled_from(["none", "ones", "zeros", "float", "longer", "bool", "sevens"]))
def test_the_byte_classifier_takes_any_tensor_and_mask(data, shape, mask):
    x = data.draw(tensors(shape))
    masks = {"ones": torch.ones(shape, dtype=torch.long), "zeros": torch.zeros(shape, dtype=torch.long),
             "float": torch.rand(shape), "bool": torch.ones(shape, dtype=torch.bool),
             "sevens": torch.full(shape, 7),
             "longer": torch.ones(*shape[:-1], shape[-1] + 1) if shape else None}
    out = run(BYTES, x, masks.get(mask))
    if out is not None:
        assert out["logits"].shape == (shape[0], 3)
        assert_finite(out)


@FUZZ
@given(data=st.data(), present=st.sets(st.sampled_from(["image", "audio", "label"]), min_size=0),
       reshape=st.booleans())
def test_the_multimodal_autoencoder_takes_any_modalities(data, present, reshape):
    b = data.draw(st.integers(0, 3))
    full = {"image": (b, 1, 8, 8), "audio": (b, 64), "label": (b,)}
    inputs = {}
    for name in sorted(present):
        shape = data.draw(shapes(*[d + 2 for d in full[name]])) if reshape else full[name]
        inputs[name] = data.draw(tensors(shape))
    out = run(MULTIMODAL, inputs)
    if out is not None:
        assert_finite(out)
        assert {n: v.shape[0] for n, v in out.items()} == dict.fromkeys(out, b)


@FUZZ
@given(data=st.data(), present=st.sets(st.sampled_from(["pixels", "tokens", "other"]), min_size=0))
def test_hip_takes_any_modalities(data, present):
    b = data.draw(st.integers(1, 2))
    inputs = {}
    for name in sorted(present):
        shape = data.draw(st.sampled_from([(b, 16, 1), (b, 8, 5), (b, 8), (b, 16)]))
        inputs[name] = data.draw(tensors(shape))
    out = run(HIP, inputs)
    if out is not None:
        assert_finite(out)
        assert {n: v.shape for n, v in out.items()} == {n: (b, *HIP.sizes[n]) for n in inputs}


def wav_bytes(samples, rate=8000, channels=1, width=2):
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(np.asarray(samples, "<i2").tobytes())
    return buffer.getvalue()


def png_bytes(shape=(8, 8)):
    buffer = io.BytesIO()
    Image.fromarray(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)).save(buffer, "PNG")
    return buffer.getvalue()


@FUZZ
@given(kind=st.sampled_from(["wav", "png"]), cut=st.floats(0, 1),
       flips=st.lists(st.integers(0, 10**6), max_size=4), garbage=st.binary(max_size=64))
def test_corrupt_or_truncated_files_are_read_or_named(tmp_path_factory, kind, cut, flips, garbage):
    from tasks.autoencode import read_png, read_wav

    good = wav_bytes(np.arange(-300, 300) * 50) if kind == "wav" else png_bytes()
    damaged = bytearray(good[:int(len(good) * cut)] + garbage)
    for f in flips:
        if damaged:
            damaged[f % len(damaged)] ^= 0xFF
    path = tmp_path_factory.mktemp("files") / f"x.{kind}"
    path.write_bytes(bytes(damaged))
    try:
        value = read_wav(path, 8000, 1024) if kind == "wav" else read_png(path, (8, 8))
    except ValueError as error:
        assert str(path) in str(error)
        return
    assert value.shape == ((1024,) if kind == "wav" else (8, 8))


@pytest.mark.parametrize("samples, message", [
    ([], "expected 1 to 1024 samples, got 0"), (np.zeros(2000), "expected 1 to 1024 samples, got 2000")])
def test_empty_and_absurdly_long_audio_are_named(tmp_path, samples, message):
    from tasks.autoencode import read_wav

    (tmp_path / "a.wav").write_bytes(wav_bytes(samples))
    with pytest.raises(ValueError, match=message):
        read_wav(tmp_path / "a.wav", 8000, 1024)


@FUZZ
@given(content=st.binary(max_size=200))
def test_text_files_of_random_bytes_are_read_or_named(tmp_path_factory, content):
    from tasks.mlm import MLMConfig, MLMTask

    folder = tmp_path_factory.mktemp("texts")
    (folder / "a.txt").write_bytes(content)
    (folder / "b.txt").write_text("some valid text " * 40)
    try:
        MLMTask(MLMConfig(data=str(folder), seq_len=16, eval_windows=2, model=dict(dim=8)))
    except ValueError as error:
        assert "a.txt" in str(error)
        return
    assert content.decode("utf-8").strip()
