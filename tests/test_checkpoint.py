import os

import pytest
import torch

import perceiver
from perceiver import checkpoint, presets
from tests.test_model import av_batch, tiny_mlm, tiny_multimodal


@pytest.mark.parametrize("make, inputs", [
    (tiny_mlm, lambda: torch.randint(0, 262, (2, 32))), (tiny_multimodal, av_batch)])
def test_save_load_round_trip(tmp_path, make, inputs):
    model = make().eval()
    x = inputs()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = perceiver.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.config == model.config
    a, b = model(inputs=x).logits, loaded(inputs=x).logits
    for key in a if isinstance(a, dict) else [None]:
        torch.testing.assert_close(a[key] if key else a, b[key] if key else b, atol=0, rtol=0)


def test_tied_embedding_stays_tied_after_loading(tmp_path):
    tiny_mlm().save_pretrained(tmp_path)
    loaded = perceiver.from_pretrained(tmp_path)
    assert loaded.output_adapter.embedding.weight is loaded.input_adapter.embedding.weight


def test_refuses_pickles_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="expected config.json"):
        perceiver.from_pretrained(tmp_path)
    tiny_mlm().save_pretrained(tmp_path)
    (tmp_path / "optimizer.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match=r"refusing to load .* pickle files \['optimizer.pt'\]"):
        perceiver.from_pretrained(tmp_path)


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny_mlm().eval()
    model.save_pretrained(tmp_path)

    def crash(module, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_model", crash)
    with pytest.raises(KeyboardInterrupt):
        perceiver.PerceiverIO(presets.byte_mlm(max_seq_len=32, dim=16, num_latents=8, latent_dim=24,
                                               num_layers=2, num_heads=2)).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    ids = torch.randint(0, 262, (1, 32))
    loaded = perceiver.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(inputs=ids).logits, model(inputs=ids).logits)


def test_saved_files_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o027)
    try:
        tiny_mlm().save_pretrained(tmp_path)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"config.json": 0o640, "model.safetensors": 0o640}  # mkstemp alone gives 0600
