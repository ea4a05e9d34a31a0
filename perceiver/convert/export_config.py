"""The transformers head and ``PerceiverConfig`` settings that reproduce one of our models.

transformers hard-codes much of each head (the MLM decoder's 8 heads and 256 qk channels, the
image preprocessors' widths and bands) and shares one ``qk_channels``/``v_channels`` between the
encoder's cross- and self-attention; a model outside that space is refused with the field that
does not fit.
"""

from __future__ import annotations

import itertools

from perceiver.convert.import_config import expect

HIDDEN_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def _effective(qk, v, query_dim):
    qk = qk or query_dim
    return qk, v or qk


def _encoder_kwargs(enc, input_dim: int) -> dict:
    expect("encoder.cross_attend_every_block", enc.cross_attend_every_block, False)
    expect("encoder.activation", enc.activation, *HIDDEN_ACT)
    d = enc.latent_dim
    cross = _effective(enc.cross_qk_dim, enc.cross_v_dim, d)
    self_qk, self_v = _effective(enc.self_qk_dim, enc.self_v_dim, d)
    expect("encoder.self_v_dim (transformers adds the attention output to the latents)", self_v, d)
    # transformers: qk_channels/v_channels shared; a missing qk follows the keys ('kv') or queries ('q')
    for qk, v, shape in itertools.product((None, cross[0]), (None, cross[1]), ("kv", "q")):
        hf_cross = _effective(qk, v, input_dim if shape == "kv" else d)
        if hf_cross == cross and _effective(qk, v, d) == (self_qk, self_v):
            kwargs = dict(qk_channels=qk, v_channels=v, cross_attention_shape_for_attention=shape)
            break
    else:
        raise ValueError(f"encoder: transformers shares qk_channels/v_channels between cross- and "
                         f"self-attention; cross (qk, v) = {cross}, self (qk, v) = {(self_qk, self_v)}")
    return kwargs | dict(
        num_latents=enc.num_latents, d_latents=d, num_blocks=enc.num_blocks,
        num_self_attends_per_block=enc.num_self_layers, num_self_attention_heads=enc.num_self_heads,
        num_cross_attention_heads=enc.num_cross_heads,
        self_attention_widening_factor=enc.self_widening_factor,
        cross_attention_widening_factor=enc.cross_widening_factor,
        use_query_residual=enc.query_residual, hidden_act=HIDDEN_ACT[enc.activation],
        attention_probs_dropout_prob=enc.dropout,
    )


def _decoder(config, query_dim, num_heads, qk, v, query_residual) -> None:
    dec = config.decoder
    expect("decoder.num_heads", dec.num_heads, num_heads)
    expect("decoder.qk_dim, decoder.v_dim", _effective(dec.qk_dim, dec.v_dim, query_dim), (qk, v))
    expect("decoder.widening_factor", dec.widening_factor, 1)
    expect("decoder.query_residual", dec.query_residual, query_residual)
    expect("decoder.activation", dec.activation, config.encoder.activation)
    expect("decoder.dropout", dec.dropout, config.encoder.dropout)


def _image_kwargs(inp) -> tuple[str, dict]:
    h, w = inp.image_shape
    size = dict(image_size=h if h == w else [h, w])
    expect("input.in_channels", inp.in_channels, 3)
    if inp.kind == "image_fourier":
        expect("input.num_bands", inp.num_bands, 64)
        expect("input.max_resolution", inp.max_resolution or (h, w), (224, 224))
        return "PerceiverForImageClassificationFourier", size
    if inp.kind == "image_conv_stem":
        expect("input.out_channels", inp.out_channels, 64)
        expect("input.num_bands", inp.num_bands, 64)
        expect("input.padding", inp.padding, "transformers")
        expect("input.max_resolution", inp.max_resolution, (56, 56))
        return "PerceiverForImageClassificationConvProcessing", size
    expect("input.image_shape (transformers keeps a square table)", w, h)
    expect("input.out_channels", inp.out_channels, 256)
    expect("input.position_dim", inp.position_dim, 256)
    expect("input.project_positions", inp.project_positions, True)
    return "PerceiverForImageClassificationLearned", dict(image_size=h)


def transformers_config(model) -> tuple[str, dict]:
    """(transformers class name, ``PerceiverConfig`` keyword arguments) for our ``PerceiverIO``."""
    config = model.config
    inp, queries, out = config.input, config.queries, config.output
    kinds = (inp.kind, out.kind)
    d = config.encoder.latent_dim
    if kinds == ("tokens", "tied_tokens"):
        expect("queries.kind", queries.kind, "learned_position_queries")
        expect("queries.num_queries", queries.num_queries, inp.max_seq_len)
        expect("queries.dim", queries.dim, inp.dim)
        _decoder(config, inp.dim, num_heads=8, qk=256, v=inp.dim, query_residual=False)
        name, kwargs = "PerceiverForMaskedLM", {}
    elif inp.kind in ("tokens", "image_fourier", "image_conv_stem", "image_conv1x1") and \
            out.kind == "classification":
        expect("queries.kind", queries.kind, "learned_queries")
        expect("queries.num_queries", queries.num_queries, 1)
        expect("queries.dim", queries.dim, d)
        _decoder(config, d, num_heads=1, qk=d, v=d, query_residual=True)
        kwargs = dict(num_labels=out.num_classes)
        if inp.kind == "tokens":
            name = "PerceiverForSequenceClassification"
        else:
            name, size = _image_kwargs(inp)
            kwargs |= size
    else:
        raise ValueError(f"model: to_transformers exports the masked LM and the classifiers (text, "
                         f"image Fourier, learned, conv); got input {inp.kind!r}, output {out.kind!r}")
    if inp.kind == "tokens":
        kwargs |= dict(vocab_size=inp.vocab_size, d_model=inp.dim, max_position_embeddings=inp.max_seq_len)
    if out.kind == "tied_tokens":
        expect("output.vocab_size", out.vocab_size, inp.vocab_size)
    return name, kwargs | _encoder_kwargs(config.encoder, model.input_adapter.output_dim)
