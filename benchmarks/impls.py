"""One builder per implementation: ``build(spec) -> (model, run)`` where ``run(ids)`` returns the
output logits. Each builder imports its package inside, so a worker process loads only one of
them (krasserm's package is also called ``perceiver``; it runs with its own path, see run.py).

Every implementation is built to the same shapes (``spec``, a dict from run.CONFIGS):
    kind        "mlm": one learned query per position, logits tied to the embedding;
                "classify": one learned query, ``classes`` logits; "hip": HiP-16 (ours only);
                "kinetics": DeepMind's Kinetics-700 video + audio + label autoencoder (ours and
                transformers; the other two have no multimodal autoencoder), decoding the
                subsampled queries ``run`` is given beside the inputs
    length, dim the byte sequence length and the embedding width (learned positions added)
    latents, latent_dim, layers, heads
    cross_qk    q/k (= v) width of the encoder cross-attention; the decoder's is ``decoder_qk``
MLP widening is 1 everywhere. lucidrains' GEGLU x 4 feed-forwards are swapped for GELU widening
1 (and its decoder gains one) so that parameter counts match; run.py prints the counts.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 262


def ours(spec: dict):
    from perceiver import PerceiverIO, presets

    if spec["kind"] == "hip":  # HiP-16 reconstructing every element of one scalar signal
        from perceiver.hip import build_hip

        model = build_hip("16", {"signal": (spec["length"], 1)})
        return model, lambda x: model({"signal": x}).logits["signal"]

    if spec["kind"] == "kinetics":
        model = PerceiverIO(presets.kinetics_autoencoder())
        return model, lambda x: model(x[0], query_index=x[1]).logits

    common = dict(max_seq_len=spec["length"], dim=spec["dim"], num_latents=spec["latents"],
                  latent_dim=spec["latent_dim"], num_layers=spec["layers"], num_heads=spec["heads"])
    if spec.get("language_perceiver"):
        config = presets.language_perceiver()
    elif spec["kind"] == "mlm":
        config = presets.byte_mlm(**common)
    else:
        config = presets.byte_classifier(num_classes=spec["classes"], **common)
    model = PerceiverIO(config)

    def run(ids):
        return model(ids).logits

    # streamed cross-attentions: the FLOP count runs them whole (model FLOPs, without the
    # recomputation; the counter's module hooks also clash with autograd.grad inside backward)
    run.streamed = [m for m in model.modules() if getattr(m, "chunk_size", None)]
    return model, run


def ours_compiled(spec: dict, mode: str | None = None):
    """``ours`` under ``torch.compile`` (the engine's ``train.compile``; ``mode="reduce-overhead"``
    adds CUDA graphs, each call a new step); ``run.eager`` is the uncompiled forward, for counting
    FLOPs (the counter does not see inside compiled code)."""
    model, eager = ours(spec)
    compiled = torch.compile(model, mode=mode)

    def run(x):
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(x).logits

    run.eager, run.streamed = eager, eager.streamed
    return model, run


def hf(spec: dict):
    import transformers
    from transformers.models.perceiver import modeling_perceiver as hf

    no_dropout = dict(attention_probs_dropout_prob=0.0)  # as every other implementation here
    if spec["kind"] == "kinetics":  # deepmind/multimodal-perceiver's configuration
        config = transformers.PerceiverConfig(
            num_latents=784, d_latents=512, num_self_attends_per_block=8, num_self_attention_heads=8,
            num_cross_attention_heads=1, num_labels=700, image_size=224, **no_dropout)
        model = transformers.PerceiverForMultimodalAutoencoding(config)
        return model, lambda x: model(inputs=x[0], subsampled_output_points=x[1]).logits
    if spec.get("language_perceiver"):  # deepmind/language-perceiver's configuration
        config = transformers.PerceiverConfig(qk_channels=256, v_channels=1280, **no_dropout)
        model = transformers.PerceiverForMaskedLM(config)
        return model, lambda ids: model(inputs=ids).logits
    config = transformers.PerceiverConfig(
        d_model=spec["dim"], vocab_size=VOCAB, max_position_embeddings=spec["length"],
        num_latents=spec["latents"], d_latents=spec["latent_dim"], num_self_attends_per_block=spec["layers"],
        num_self_attention_heads=spec["heads"], num_cross_attention_heads=spec["heads"],
        qk_channels=spec["cross_qk"], v_channels=spec["cross_qk"], num_labels=spec.get("classes", 2),
        **no_dropout)
    if spec["kind"] == "mlm":
        decoder = hf.PerceiverBasicDecoder(
            config, output_num_channels=spec["dim"], output_index_dims=spec["length"],
            num_channels=spec["dim"], qk_channels=spec["decoder_qk"], v_channels=spec["dim"],
            num_heads=spec["heads"], final_project=False,
            trainable_position_encoding_kwargs=dict(num_channels=spec["dim"], index_dims=spec["length"]))
    else:
        decoder = hf.PerceiverClassificationDecoder(
            config, num_channels=spec["latent_dim"], use_query_residual=True, num_heads=spec["heads"],
            qk_channels=spec["decoder_qk"], v_channels=spec["latent_dim"],
            trainable_position_encoding_kwargs=dict(num_channels=spec["latent_dim"], index_dims=1))
    preprocessor = hf.PerceiverTextPreprocessor(config)
    perceiver = hf.PerceiverModel(config, input_preprocessor=preprocessor, decoder=decoder)
    if spec["kind"] != "mlm":
        return perceiver, lambda ids: perceiver(inputs=ids).logits
    model = nn.ModuleDict(dict(perceiver=perceiver, embedding_decoder=hf.PerceiverEmbeddingDecoder(config)))
    tied = preprocessor.embeddings
    return model, lambda ids: model.embedding_decoder(perceiver(inputs=ids).logits, embedding_layer=tied)


def kr(spec: dict):
    # built from perceiver.model.core: its text packages import pytorch-lightning at import time
    from perceiver.model import core

    if spec.get("language_perceiver"):  # its convert_config of deepmind/language-perceiver
        spec = dict(spec, dim=768, latent_dim=1280, layers=26, cross_qk=256, decoder_qk=256, v=1280)
    v = spec.get("v", spec["cross_qk"])
    inputs = core.TokenInputAdapter(VOCAB, spec["length"], spec["dim"])
    encoder = core.PerceiverEncoder(
        inputs, spec["latents"], spec["latent_dim"], num_cross_attention_heads=spec["heads"],
        num_cross_attention_qk_channels=spec["cross_qk"], num_cross_attention_v_channels=v,
        num_self_attention_heads=spec["heads"], num_self_attention_qk_channels=spec["cross_qk"] if "v" in spec
        else None, num_self_attention_v_channels=v if "v" in spec else None,
        num_self_attention_layers_per_block=spec["layers"])
    if spec["kind"] == "mlm":
        queries = core.TrainableQueryProvider(spec["length"], spec["dim"])
        decoder = core.PerceiverDecoder(core.TiedTokenOutputAdapter(VOCAB), queries, spec["latent_dim"],
                                        num_cross_attention_heads=spec["heads"],
                                        num_cross_attention_qk_channels=spec["decoder_qk"],
                                        num_cross_attention_v_channels=spec["dim"],
                                        cross_attention_residual=False)
        model = core.PerceiverIO(encoder, decoder)
        return model, lambda ids: decoder(encoder(ids), txt_embedding=inputs.txt_embedding)
    queries = core.TrainableQueryProvider(1, spec["latent_dim"])
    head = core.ClassificationOutputAdapter(spec["classes"], spec["latent_dim"])
    decoder = core.PerceiverDecoder(head, queries, spec["latent_dim"],
                                    num_cross_attention_heads=spec["heads"],
                                    num_cross_attention_qk_channels=spec["decoder_qk"])
    model = core.PerceiverIO(encoder, decoder)
    return model, lambda ids: decoder(encoder(ids))


class _LucidrainsModel(nn.Module):
    """perceiver-pytorch's ``PerceiverIO`` with the embedding, positions and learned decoder queries of
    the other implementations (its own ``PerceiverLM`` queries with the input embeddings)."""

    def __init__(self, spec: dict):
        from perceiver_pytorch import PerceiverIO

        super().__init__()
        mlm = spec["kind"] == "mlm"
        self.token_emb = nn.Embedding(VOCAB, spec["dim"])
        self.pos_emb = nn.Parameter(torch.randn(spec["length"], spec["dim"]) * 0.02)
        query_dim = spec["dim"] if mlm else spec["latent_dim"]
        self.queries = nn.Parameter(torch.randn(spec["length"] if mlm else 1, query_dim) * 0.02)
        head_dim = spec["cross_qk"] // spec["heads"]
        self.perceiver_io = PerceiverIO(
            depth=spec["layers"], dim=spec["dim"], queries_dim=query_dim,
            logits_dim=None if mlm else spec["classes"], num_latents=spec["latents"],
            latent_dim=spec["latent_dim"], cross_heads=spec["heads"], latent_heads=spec["heads"],
            cross_dim_head=head_dim, latent_dim_head=spec["latent_dim"] // spec["heads"], decoder_ff=True)
        for module in self.modules():
            if type(module).__name__ == "FeedForward":
                width = module.net[0].in_features
                module.net = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.bias = nn.Parameter(torch.zeros(VOCAB)) if mlm else None

    def forward(self, ids):
        x = self.token_emb(ids) + self.pos_emb[: ids.shape[1]]
        out = self.perceiver_io(x, queries=self.queries)
        return out @ self.token_emb.weight.T + self.bias if self.bias is not None else out[:, 0]


def lu(spec: dict):
    if spec.get("language_perceiver"):
        raise NotImplementedError("perceiver-pytorch has one head width for q, k and v; the language "
                                  "perceiver's self-attention has qk 256 and v 1280")
    model = _LucidrainsModel(spec)
    return model, model


BUILDERS = {"ours": ours, "ours-compiled": ours_compiled, "hf": hf, "kr": kr, "lu": lu}
