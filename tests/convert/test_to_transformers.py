"""Export to transformers: the masked LM and the classifiers round-trip exactly."""

import dataclasses

import pytest
import torch

from perceiver import presets
from perceiver.convert import from_transformers, to_transformers
from perceiver.convert.import_config import ACTIVATIONS
from perceiver.model import PerceiverIO
from tests.convert.common import hf_config, padding_mask, randomized, relative_error, transformers
from tests.convert.test_from_transformers import ENCODERS

HEADS = ["PerceiverForMaskedLM", "PerceiverForSequenceClassification",
         "PerceiverForImageClassificationLearned", "PerceiverForImageClassificationFourier",
         "PerceiverForImageClassificationConvProcessing"]


@pytest.mark.parametrize("overrides", ENCODERS)
@pytest.mark.parametrize("head", HEADS)
def test_transformers_to_ours_to_transformers_is_exact(head, overrides):
    if "Image" in head and overrides.get("num_cross_attention_heads") == 2:
        overrides = dict(overrides, num_cross_attention_heads=1)  # 2 heads do not divide 261 pixel channels
    hf = randomized(getattr(transformers, head)(hf_config(image_size=6, **overrides)))
    back = to_transformers(from_transformers(hf))
    assert type(back).__name__ == head and not back.training
    assert back.state_dict().keys() == hf.state_dict().keys()
    for key, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    fields = ["num_latents", "d_latents", "num_blocks", "num_self_attends_per_block", "qk_channels",
              "v_channels", "cross_attention_shape_for_attention", "num_self_attention_heads",
              "num_cross_attention_heads", "self_attention_widening_factor", "use_query_residual",
              "cross_attention_widening_factor"]
    fields += ["num_labels"] if head != "PerceiverForMaskedLM" else []
    fields += ["image_size"] if "Image" in head else ["vocab_size", "d_model", "max_position_embeddings"]
    for field in fields:
        assert getattr(back.config, field) == getattr(hf.config, field), field
    # gelu_new and gelu_pytorch_tanh are the same tanh approximation; it exports as the latter
    assert ACTIVATIONS[back.config.hidden_act] == ACTIVATIONS[hf.config.hidden_act]


def resolved(config):
    """The config with default widths written out (conversion writes them explicitly)."""
    enc, dec = config.encoder, config.decoder
    cross_qk, self_qk = enc.cross_qk_dim or enc.latent_dim, enc.self_qk_dim or enc.latent_dim
    enc = dataclasses.replace(enc, cross_qk_dim=cross_qk, cross_v_dim=enc.cross_v_dim or cross_qk,
                              self_qk_dim=self_qk, self_v_dim=enc.self_v_dim or self_qk)
    qk = dec.qk_dim or config.queries.dim
    return dataclasses.replace(config, encoder=enc, decoder=dataclasses.replace(dec, qk_dim=qk,
                                                                                 v_dim=dec.v_dim or qk))


def _ours_to_transformers_and_back(model):
    model = randomized(model)
    hf = to_transformers(model)
    again = from_transformers(hf)
    assert again.config == resolved(model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    return hf.eval()


def test_our_masked_lm_exports_and_predicts_the_same():
    config = presets.byte_mlm(max_seq_len=32, dim=256, num_latents=8, latent_dim=32, num_layers=2)
    model = PerceiverIO(config)
    hf = _ours_to_transformers_and_back(model)
    ids, mask = torch.randint(0, 262, (3, 32)), padding_mask(3, 32)
    with torch.no_grad():
        assert relative_error(hf(inputs=ids, attention_mask=mask).logits,
                              model(ids, attention_mask=mask).logits) < 1e-4


def test_our_image_classifier_exports_and_predicts_the_same():
    config = presets.image_classifier_fourier(num_classes=7)
    config.input.image_shape = (6, 5)
    config.encoder = dataclasses.replace(config.encoder, num_latents=8, latent_dim=32, num_self_layers=1,
                                         num_blocks=2, num_self_heads=4)
    config.queries.dim = 32
    model = PerceiverIO(config)
    hf = _ours_to_transformers_and_back(model)
    assert type(hf).__name__ == "PerceiverForImageClassificationFourier" and hf.config.image_size == [6, 5]
    pixels = torch.randn(2, 3, 6, 5)
    with torch.no_grad():
        assert relative_error(hf(inputs=pixels).logits, model(pixels).logits) < 1e-4


def _classifier(**encoder):
    config = presets.byte_classifier(num_classes=3, max_seq_len=16, dim=16, num_latents=4, latent_dim=32)
    config.encoder = dataclasses.replace(config.encoder, num_self_layers=1, **encoder)
    config.decoder.num_heads = 1  # transformers' classification decoder has one head
    return config


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c, "encoder", dataclasses.replace(c.encoder, self_v_dim=64)),
     r"encoder.self_v_dim .*: expected 32, got 64"),
    (lambda c: setattr(c, "encoder", dataclasses.replace(c.encoder, cross_qk_dim=8, self_qk_dim=16,
                                                         self_v_dim=32)),
     "encoder: transformers shares qk_channels/v_channels"),
    (lambda c: setattr(c, "encoder", dataclasses.replace(c.encoder, cross_attend_every_block=True,
                                                         num_blocks=2)),
     "encoder.cross_attend_every_block: expected False, got True"),
    (lambda c: setattr(c.decoder, "num_heads", 2), "decoder.num_heads: expected 1, got 2"),
    (lambda c: setattr(c.decoder, "dropout", 0.5), "decoder.dropout: expected 0.0, got 0.5"),
])
def test_models_transformers_cannot_express_are_refused(change, message):
    config = _classifier()
    to_transformers(PerceiverIO(config))  # exportable as it is
    change(config)
    with pytest.raises(ValueError, match=message):
        to_transformers(PerceiverIO(config))


def test_other_heads_are_refused():
    config = presets.multimodal_autoencoder()
    with torch.device("meta"):
        model = PerceiverIO(config)
    with pytest.raises(ValueError, match="to_transformers exports the masked LM and the classifiers"):
        to_transformers(model)
