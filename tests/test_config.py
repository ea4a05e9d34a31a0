import copy
import json

import pytest

from perceiver import from_dict, presets, to_dict
from perceiver.config import REGISTRY
from perceiver.hip import hip_config
from perceiver.inputs import Conv1x1Adapter, ConvStemAdapter, LogMelAdapter
from perceiver.model import Perceiver, PerceiverIO
from perceiver.outputs import OpticalFlowOutput
from perceiver.queries import InputQueries

CONFIGS = [
    presets.byte_mlm(), presets.language_perceiver(), presets.byte_classifier(),
    presets.image_classifier_fourier(), presets.multimodal_autoencoder(), presets.optical_flow(),
    presets.kinetics_autoencoder(),
    PerceiverIO.Config(input=ConvStemAdapter.Config(), queries=InputQueries.Config(64 + 258),
                       output=OpticalFlowOutput.Config()),
    PerceiverIO.Config(input=Conv1x1Adapter.Config(), queries=InputQueries.Config(512),
                       output=OpticalFlowOutput.Config((224, 224))),
    Perceiver.Config(input=LogMelAdapter.Config()),
    hip_config("16", {"image": (1024, 3), "audio": (128, 16)}, num_position_encoding_channels=512),
    hip_config("mini", {"image": (1024, 3), "label": (1, 10)}, label_modalities=("label",)),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__qualname__)
def test_json_round_trip(config):
    text = json.dumps(to_dict(config))
    assert from_dict(json.loads(text)) == config


def test_every_registered_kind_is_covered():
    seen = set()

    def walk(value):
        if isinstance(value, dict):
            seen.add(value.get("kind"))
            for v in value.values():
                walk(v)

    for config in CONFIGS:
        walk(to_dict(config))
    assert set(REGISTRY) <= seen


def test_bad_configs():
    with pytest.raises(ValueError, match="config kind: expected one of .* got 'nope'"):
        from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match=r"config for 'tokens': unknown fields \['colour'\]"):
        from_dict({"kind": "tokens", "colour": 3})
    data = to_dict(presets.byte_mlm())
    data["encoder"]["latents"] = 3
    with pytest.raises(ValueError, match=r"EncoderConfig: unknown fields \['latents'\]"):
        from_dict(data)


SMALL = presets.byte_classifier(num_classes=2, max_seq_len=16, dim=8, num_latents=4, latent_dim=8,
                                num_layers=1, num_heads=2)


@pytest.mark.parametrize("where, value, message", [
    (("encoder", "num_latents"), -4, r"config\.encoder\.num_latents: expected an integer >= 1, got -4"),
    (("encoder", "num_latents"), 4.5, r"config\.encoder\.num_latents: expected an integer >= 1, got 4\.5"),
    (("encoder", "num_latents"), True, r"expected an integer >= 1, got True"),
    (("encoder", "dropout"), float("nan"), r"encoder\.dropout: expected a finite number >= 0, got nan"),
    (("encoder", "query_residual"), "yes", r"encoder\.query_residual: expected true or false, got 'yes'"),
    (("encoder", "activation"), 3, r"config\.encoder\.activation: expected a string, got 3"),
    (("encoder", "self_qk_dim"), "wide", r"encoder\.self_qk_dim: expected an integer >= 1, got 'wide'"),
    (("input", "max_seq_len"), None, r"config\.input\.max_seq_len: expected an integer >= 1, got None"),
])
def test_config_values_are_validated_when_a_saved_model_is_loaded(tmp_path, where, value, message):
    from perceiver import from_pretrained
    from perceiver.config import build

    build(SMALL).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data[where[0]][where[1]] = value
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        from_pretrained(tmp_path)


def test_tuple_fields_are_checked_item_by_item():
    from perceiver.config import validate
    from perceiver.inputs import ImagePatchAdapter

    validate(ImagePatchAdapter.Config((28, 28), 1, 4, 8))
    with pytest.raises(ValueError, match=r"config\.image_shape: expected 2 values, got \(28,\)"):
        validate(ImagePatchAdapter.Config((28,), 1, 4, 8))
    with pytest.raises(ValueError, match=r"config\.image_shape\[1\]: expected an integer >= 1, got -28"):
        validate(ImagePatchAdapter.Config((28, -28), 1, 4, 8))


@pytest.mark.parametrize("where, value, message", [
    (("encoder", "num_latents"), 0, r"config\.encoder\.num_latents: expected an integer >= 1, got 0"),
    (("encoder", "dropout"), 5.0, r"config\.encoder\.dropout: expected a probability in \[0, 1\), got 5\.0"),
    (("decoder", "dropout"), 1, r"config\.decoder\.dropout: expected a probability in \[0, 1\), got 1"),
])
def test_sizes_of_zero_and_dropout_of_one_or_more_are_refused(where, value, message):
    from perceiver.config import validate

    config = copy.deepcopy(SMALL)
    setattr(getattr(config, where[0]), where[1], value)
    with pytest.raises(ValueError, match=message):
        validate(config)
    validate(presets.multimodal_autoencoder(image_shape=(8, 8), num_samples=64, num_classes=3, num_bands=0))


def test_a_config_file_that_is_not_json_or_lacks_a_section_is_named(tmp_path):
    from perceiver import from_pretrained
    from perceiver.config import build

    build(SMALL).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in data.items() if k != "decoder"}))
    with pytest.raises(ValueError, match=r"config\.json: expected the sections .* missing \['decoder'\]"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "perceiver_io", ')
    with pytest.raises(ValueError, match=r"config\.json: expected a JSON model config, got unreadable text"):
        from_pretrained(tmp_path)
