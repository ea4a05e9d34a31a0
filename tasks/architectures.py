"""The byte jobs' two model families: Perceiver IO (``perceiver-io``) and HiP (``hip-mini``,
``hip-16``, ``hip-256``, ``hip-16x3``), chosen with ``perceiver train ... --model NAME``.

A HiP reads the bytes as one modality of token ids, ``bytes: (length, 262)``, always of full
length (padding is the [PAD] byte; HiP has no attention mask). The classifier is the
class-bottleneck HiP with the label as a second modality that is always masked (zeros) and read
out at the processor; the masked LM reconstructs the byte logits of every position.
``task.model`` holds the preset function's arguments: ``presets.byte_classifier`` /
``presets.byte_mlm`` for Perceiver IO, ``HiP.Config`` fields (dropout, drop_path, ...) for HiP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from perceiver import presets, tokenizer
from tasks.distributed import unwrap

PERCEIVER_IO = "perceiver-io"
ARCHITECTURES = (PERCEIVER_IO, "hip-mini", "hip-16", "hip-256", "hip-16x3")


def check(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"--model: expected one of {list(ARCHITECTURES)}, got {architecture!r}")


def _hip(architecture: str, modalities: dict, model_args: dict, **kwargs):
    from perceiver.hip import hip_config

    return hip_config(architecture.removeprefix("hip-"), modalities, **kwargs, **model_args)


def byte_classifier(architecture: str, num_classes: int, max_seq_len: int, model_args: dict):
    if architecture == PERCEIVER_IO:
        args = dict(num_classes=num_classes, max_seq_len=max_seq_len) | model_args
        return presets.byte_classifier(**args)
    return _hip(architecture, {"bytes": (max_seq_len, tokenizer.VOCAB_SIZE), "label": (1, num_classes)},
                model_args, label_modalities=("label",))


def byte_mlm(architecture: str, seq_len: int, model_args: dict):
    if architecture == PERCEIVER_IO:
        return presets.byte_mlm(**(dict(max_seq_len=seq_len) | model_args))
    return _hip(architecture, {"bytes": (seq_len, tokenizer.VOCAB_SIZE)}, model_args)


def classifier_logits(architecture: str, model, ids: Tensor, mask: Tensor, num_classes: int) -> Tensor:
    """``[B, num_classes]`` for byte ids ``[B, L]`` with padding mask ``[B, L]``."""
    if architecture == PERCEIVER_IO:
        return model(ids, attention_mask=mask).logits
    ids = pad_to_length(model, ids)
    label = torch.zeros(ids.shape[0], 1, num_classes, device=ids.device)
    return model({"bytes": ids, "label": label}).logits["label"][:, 0]


def token_logits(architecture: str, model, ids: Tensor, positions: Tensor,
                 decode_all: bool = False) -> Tensor:
    """Byte logits ``[B, O, 262]`` at ``positions [B, O]`` of ids ``[B, L]``: Perceiver IO decodes
    only those positions unless ``decode_all``; HiP always reconstructs every position."""
    if architecture == PERCEIVER_IO and not decode_all:
        return model(ids, query_index=positions).logits
    if architecture == PERCEIVER_IO:
        logits = model(ids).logits
    else:
        logits = model({"bytes": pad_to_length(model, ids)}).logits["bytes"]
    return logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))


def pad_to_length(model, ids: Tensor) -> Tensor:
    """Byte ids ``[B, L]`` padded with [PAD] to the HiP's fixed length."""
    length = unwrap(model).config.modalities["bytes"][0]
    if ids.shape[1] > length:
        raise ValueError(f"inputs: expected at most {length} bytes, got {ids.shape[1]}")
    return F.pad(ids, (0, length - ids.shape[1]), value=tokenizer.PAD)
