"""State-dict key map between transformers' Perceiver heads and this package.

Each head has a list of (transformers prefix pattern, our prefix) rules; the first match wins and
``\\1`` keeps a captured layer number or modality name. Keys inside a transformers
``PerceiverLayer`` are then renamed with ``LAYER_PARTS``. The same map serves both directions:
``to_transformers`` walks transformers' keys and looks each one up here.
"""

from __future__ import annotations

import re

ENCODER = [
    (r"perceiver\.embeddings\.latents", "encoder.latents"),
    (r"perceiver\.encoder\.cross_attention\.", "encoder.cross_attention."),
    (r"perceiver\.encoder\.self_attends\.(\d+)\.", r"encoder.self_attention.layers.\1."),
]
TEXT_INPUT = [
    (r"perceiver\.input_preprocessor\.embeddings\.", "input_adapter.embedding."),
    (r"perceiver\.input_preprocessor\.position_embeddings\.weight", "input_adapter.positions.table"),
]
CLASSIFIER_DECODER = [  # PerceiverClassificationDecoder: one learned query, a linear classifier
    (r"perceiver\.decoder\.decoder\.decoding_cross_attention\.", "decoder.cross_attention."),
    (r"perceiver\.decoder\.decoder\.output_position_encodings\.position_embeddings", "queries.table.table"),
    (r"perceiver\.decoder\.decoder\.final_layer\.", "output_adapter.linear."),
]
IMAGE_INPUT = [  # the parameters of whichever PerceiverImagePreprocessor variant the head uses
    (r"perceiver\.input_preprocessor\.convnet_1x1\.", "input_adapter.conv."),
    (r"perceiver\.input_preprocessor\.convnet\.conv\.", "input_adapter.conv."),
    (r"perceiver\.input_preprocessor\.convnet\.batchnorm\.", "input_adapter.norm."),
    (r"perceiver\.input_preprocessor\.position_embeddings\.position_embeddings",
     "input_adapter.positions.table"),
    (r"perceiver\.input_preprocessor\.positions_projection\.", "input_adapter.position_projection."),
    (r"perceiver\.input_preprocessor\.conv_after_patches\.", "input_adapter.projection."),
]
HEADS = {
    "PerceiverForMaskedLM": TEXT_INPUT + [
        (r"perceiver\.decoder\.decoding_cross_attention\.", "decoder.cross_attention."),
        (r"perceiver\.decoder\.output_position_encodings\.position_embeddings", "queries.table.table"),
        (r"embedding_decoder\.bias", "output_adapter.bias"),
    ],
    "PerceiverForSequenceClassification": TEXT_INPUT + CLASSIFIER_DECODER,
    "PerceiverForImageClassificationLearned": IMAGE_INPUT + CLASSIFIER_DECODER,
    "PerceiverForImageClassificationFourier": IMAGE_INPUT + CLASSIFIER_DECODER,
    "PerceiverForImageClassificationConvProcessing": IMAGE_INPUT + CLASSIFIER_DECODER,
    "PerceiverForOpticalFlow": IMAGE_INPUT + [
        (r"perceiver\.decoder\.decoder\.decoding_cross_attention\.", "decoder.cross_attention."),
        (r"perceiver\.decoder\.decoder\.final_layer\.", "output_adapter.linear."),
    ],
    "PerceiverForMultimodalAutoencoding": [
        (r"perceiver\.input_preprocessor\.padding\.(\w+)", r"input_adapter.padding.\1"),
        (r"perceiver\.input_preprocessor\.mask\.(\w+)", r"input_adapter.mask_tokens.\1"),
        (r"perceiver\.decoder\.modalities\.(\w+)\.decoder\.output_position_encodings\.position_embeddings",
         r"queries.providers.\1.table.table"),
        (r"perceiver\.decoder\.padding\.(\w+)", r"queries.padding.\1"),
        (r"perceiver\.decoder\.decoder\.decoding_cross_attention\.", "decoder.cross_attention."),
        (r"perceiver\.decoder\.decoder\.final_layer\.", "output_adapter.projection."),
        (r"perceiver\.output_postprocessor\.modalities\.(\w+)\.classifier\.",
         r"output_adapter.heads.\1.linear."),
    ],
}
# Inside a PerceiverLayer: transformers' names -> ours.
LAYER_PARTS = [
    (r"attention\.self\.layernorm1\.", "q_norm."),  # "norm." in self-attention layers
    (r"attention\.self\.layernorm2\.", "kv_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"layernorm\.", "mlp_norm."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
]
LAYERS = re.compile(
    r"(encoder\.cross_attention|encoder\.self_attention\.layers\.\d+|decoder\.cross_attention)\.(.*)")


def convert_key(key: str, head: str) -> str | None:
    """Our state-dict key for a transformers key of ``head``, or None if no rule covers it."""
    for pattern, target in ENCODER + HEADS[head]:
        match = re.match(pattern, key)
        if match is None:
            continue
        ours = match.expand(target) + key[match.end():]
        layer = LAYERS.fullmatch(ours)
        if layer is None:
            return ours
        prefix, rest = layer.groups()
        for part, new in LAYER_PARTS:
            if re.match(part, rest):
                if new == "q_norm." and ".layers." in prefix:
                    new = "norm."
                return f"{prefix}.{re.sub(part, new, rest, count=1)}"
        return None
    return None
