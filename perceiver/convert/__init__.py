"""Hugging Face transformers' Perceiver models <-> this package, weight for weight.

``from_transformers`` loads every official head: ``PerceiverForMaskedLM``,
``...SequenceClassification``, ``...ImageClassificationLearned``, ``...Fourier``,
``...ConvProcessing``, ``PerceiverForOpticalFlow`` and ``PerceiverForMultimodalAutoencoding``.
Called with the same tensors (fp32, eval mode) the converted model gives the same logits, with
two calling differences: the MLM head decodes the input's positions (transformers decodes all
``max_position_embeddings``; pass ``query_index=torch.arange(2048)``), and the multimodal head
takes transformers' ``subsampled_output_points`` as ``query_index``. With ``match="jax"`` the
model instead follows DeepMind's JAX code where transformers departs from it (tanh GELU, 'SAME'
padding in the conv stem).
``to_transformers`` exports the masked LM and the classifiers back. transformers is imported
only when one of these functions runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from perceiver.checkpoint import PICKLE_SUFFIXES
from perceiver.convert.export_config import transformers_config
from perceiver.convert.import_config import SUPPORTED, config_from_transformers
from perceiver.convert.keys import convert_key
from perceiver.model import PerceiverIO


def _load_transformers(model_or_path):
    if isinstance(model_or_path, nn.Module):
        return model_or_path
    import transformers

    local = Path(model_or_path).is_dir()
    if local and not list(Path(model_or_path).glob("*.safetensors")):
        pickles = sorted(p.name for p in Path(model_or_path).glob("*") if p.suffix in PICKLE_SUFFIXES)
        raise ValueError(f"model_or_path: expected safetensors weights in {str(model_or_path)!r}, found "
                         f"{pickles or 'none'}; pickled weights are not loaded (unpickling can run code): "
                         "convert them to safetensors with transformers first (from_pretrained, then "
                         "save_pretrained(dir, safe_serialization=True))")
    config = transformers.AutoConfig.from_pretrained(model_or_path)
    architectures = getattr(config, "architectures", None) or []
    if not architectures or architectures[0] not in SUPPORTED:
        raise ValueError(f"model_or_path: expected a checkpoint of {list(SUPPORTED)}, got "
                         f"architectures={architectures}")
    return getattr(transformers, architectures[0]).from_pretrained(model_or_path, use_safetensors=True)


def _key_pairs(hf_keys, head: str) -> dict[str, str]:
    """``{transformers key: our key}``; every transformers key must have a rule."""
    pairs = {key: convert_key(key, head) for key in hf_keys}
    unmapped = [key for key, ours in pairs.items() if ours is None]
    if unmapped:
        raise ValueError(f"model: transformers weights with no counterpart here: {unmapped}")
    return pairs


def _aliases(state: dict) -> dict[str, str]:
    """Tied weights (e.g. MLM logits and input embedding): ``{second name: first name}``."""
    first, aliases = {}, {}
    for key, tensor in state.items():
        name = first.setdefault(id(tensor), key)
        if name != key:
            aliases[key] = name
    return aliases


def _fit(key: str, value: torch.Tensor, shape) -> torch.Tensor:
    """``value`` in ``shape``, allowing only singleton dimensions to differ ([1, C] vs [C])."""
    if value.shape == shape:
        return value
    if [d for d in value.shape if d != 1] == [d for d in shape if d != 1]:
        return value.reshape(shape)
    raise ValueError(f"{key}: expected shape {list(shape)}, got {list(value.shape)}")


def _load(module: nn.Module, values: dict, what: str) -> None:
    """Set every weight of ``module`` from ``values`` (tied names filled from their first name)."""
    target = module.state_dict(keep_vars=True)
    values = dict(values)
    for key, first in _aliases(target).items():
        if first in values:
            values[key] = values[first]
    missing = sorted(set(target) - set(values))
    unexpected = sorted(set(values) - set(target))
    if missing or unexpected:
        raise ValueError(f"{what}: conversion left weights unset {missing} or unused {unexpected}")
    module.load_state_dict({k: _fit(k, v, target[k].shape) for k, v in values.items()}, strict=True)


def jax_behaviour(config: PerceiverIO.Config) -> PerceiverIO.Config:
    """``config`` with DeepMind's JAX behaviour where transformers departs from it: the tanh
    approximation of GELU and TensorFlow 'SAME' padding in the conv stem (56 x 56 at 224)."""
    replace = dataclasses.replace
    config = replace(config, encoder=replace(config.encoder, activation="gelu_tanh"),
                     decoder=replace(config.decoder, activation="gelu_tanh"))
    if config.input.kind == "image_conv_stem":
        config = replace(config, input=replace(config.input, padding="same"))
    return config


@torch.no_grad()
def from_transformers(model_or_path, image_shape=None, match: str = "transformers") -> PerceiverIO:
    """This package's model with the weights of a transformers Perceiver head (an instance, a
    directory written by its ``save_pretrained``, or a hub id when online). ``image_shape`` (H, W)
    fixes the input size of the image classifiers (default: ``config.image_size``). ``match``:
    ``"transformers"`` reproduces transformers' logits, ``"jax"`` DeepMind's code (see
    :func:`jax_behaviour`)."""
    if match not in ("transformers", "jax"):
        raise ValueError(f"match: expected 'transformers' or 'jax', got {match!r}")
    hf_model = _load_transformers(model_or_path)
    config = config_from_transformers(hf_model, image_shape)
    model = PerceiverIO(jax_behaviour(config) if match == "jax" else config)
    source = hf_model.state_dict()
    pairs = _key_pairs(source, type(hf_model).__name__)
    _load(model, {ours: source[key] for key, ours in pairs.items()}, "model")
    return model.train(hf_model.training)


@torch.no_grad()
def to_transformers(model: PerceiverIO):
    """The transformers head (``PerceiverForMaskedLM``, ``...SequenceClassification`` or an image
    classifier) with ``model``'s weights; ``from_transformers`` of it gives ``model`` back exactly."""
    import transformers

    if not isinstance(model, PerceiverIO):
        raise ValueError(f"model: expected a PerceiverIO, got {type(model).__name__}")
    try:
        name, kwargs = transformers_config(model)
    except ValueError as error:
        raise ValueError(f"model: transformers' Perceiver heads cannot express this model: {error} "
                         f"(they fix that value; what exports: perceiver export --help)") from error
    hf_model = getattr(transformers, name)(transformers.PerceiverConfig(**kwargs))
    ours = model.state_dict()
    pairs = _key_pairs(hf_model.state_dict(), name)
    unused = sorted(set(ours) - set(pairs.values()) - set(_aliases(model.state_dict(keep_vars=True))))
    if unused:
        raise ValueError(f"model: weights with no transformers counterpart: {unused}")
    _load(hf_model, {key: ours[mine] for key, mine in pairs.items()}, "transformers model")
    return hf_model.train(model.training)


__all__ = ["SUPPORTED", "config_from_transformers", "convert_key", "from_transformers", "jax_behaviour",
           "to_transformers"]
