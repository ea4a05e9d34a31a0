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
