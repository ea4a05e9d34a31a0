"""Long-sequence classification of byte strings: ListOps, man pages by language (``manpages``), or
any dataset with a text and a label column (a ``datasets`` directory saved with ``save_to_disk``,
or a hub name when online).

Text is read as UTF-8 bytes (``perceiver.tokenizer``) up to ``max_seq_len``; one learned query is
decoded into class logits. Metrics: accuracy, and the confusion matrix from ``confusion``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from perceiver import tokenizer
from tasks import architectures


@dataclass
class ClassifyConfig:
    data: str = "listops"  # listops, manpages, a datasets directory or a hub name
    text_column: str | None = None  # default: Source for listops, text otherwise
    label_column: str | None = None  # default: Target for listops, label otherwise
    max_seq_len: int = 2048
    data_sizes: dict = field(default_factory=dict)  # generated data only: {"train": n, ...}
    model: dict = field(default_factory=dict)  # the architecture's arguments (tasks.architectures)
    architecture: str = "perceiver-io"  # or hip-mini, hip-16, hip-256, hip-16x3
    eval_batch_size: int = 64
    skip_bad: bool = False  # drop empty texts and out-of-range labels (counted) instead of failing


def cache_dir() -> Path:
    return Path(os.environ.get("PERCEIVER_CACHE", Path.home() / ".cache" / "perceiver"))


def columns(config: ClassifyConfig) -> tuple[str, str]:
    defaults = ("Source", "Target") if config.data == "listops" else ("text", "label")
    return config.text_column or defaults[0], config.label_column or defaults[1]


def load_splits(config: ClassifyConfig):
    """``(DatasetDict with train/validation/test, text transform)`` for ``config.data``."""
    import datasets

    if config.data == "listops":
        from tasks import listops

        return listops.splits(cache_dir(), sizes=config.data_sizes or None), listops.dense
    if config.data == "manpages":
        from tasks import manpages

        return manpages.splits(cache_dir()), None
    if Path(config.data).exists():
        splits = datasets.load_from_disk(config.data)
    else:
        splits = datasets.load_dataset(config.data)
    missing = sorted({"train", "validation"} - set(splits))
    if missing:
        raise ValueError(f"data: expected splits train and validation in {config.data!r}, missing {missing}")
    for name, split in splits.items():
        for column in columns(config):
            if column not in split.column_names:
                raise ValueError(f"data: expected a column {column!r} in split {name!r}, "
                                 f"got {split.column_names}")
    return splits, None


def num_classes(split, label_column: str) -> int:
    feature = split.features[label_column]
    if hasattr(feature, "num_classes"):
        return feature.num_classes
    return int(max(split[label_column])) + 1


class ClassifyTask:
    best_metric = "accuracy"

    def __init__(self, config: ClassifyConfig):
        architectures.check(config.architecture)
        self.config = config
        self.text_column, self.label_column = columns(config)
        self.splits, self.transform = load_splits(config)
        self.num_classes = num_classes(self.splits["train"], self.label_column)
        self.skipped = 0
        for name in list(self.splits):
            self.splits[name] = self._check_records(name, self.splits[name])

    def _check_records(self, name: str, split):
        """Empty texts and labels outside ``[0, num_classes)`` fail, naming the record, or are
        dropped with ``skip_bad`` (and counted in ``skipped``)."""
        texts, labels = split[self.text_column], split[self.label_column]
        bad = {}
        for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
            if not isinstance(label, int) or not 0 <= label < self.num_classes:
                bad[i] = f"{self.label_column}={label!r}, expected an integer in [0, {self.num_classes})"
            elif not isinstance(text, str) or not text.strip():
                bad[i] = f"{self.text_column} is empty"
        if bad and not self.config.skip_bad:
            first = next(iter(bad))
            raise ValueError(f"data: {len(bad)} bad record(s) in split {name!r}, first: record {first}: "
                             f"{bad[first]} (task.skip_bad=true drops them)")
        if not bad:
            return split
        self.skipped += len(bad)
        print(f"data: skipped {len(bad)} bad record(s) in split {name!r}", file=sys.stderr)
        return split.select([i for i in range(len(split)) if i not in bad])

    def model_config(self):
        config = self.config
        return architectures.byte_classifier(config.architecture, self.num_classes, config.max_seq_len,
                                             config.model)

    def num_train_examples(self) -> int:
        return len(self.splits["train"])

    def encode(self, texts: list[str]):
        if self.transform is not None:
            texts = [self.transform(t) for t in texts]
        return tokenizer.batch_encode(texts, self.config.max_seq_len)

    def _batch(self, rows):
        ids, mask = self.encode(rows[self.text_column])
        labels = torch.tensor(rows[self.label_column], dtype=torch.long)
        return {"inputs": ids, "attention_mask": mask, "labels": labels}

    def train_batch(self, indices, generator=None):
        return self._batch(self.splits["train"][indices])

    def loss(self, model, batch):
        logits = self.logits(model, batch["inputs"], batch["attention_mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": float(accuracy)}

    def logits(self, model, ids, mask) -> torch.Tensor:
        return architectures.classifier_logits(self.config.architecture, model, ids, mask, self.num_classes)

    @torch.no_grad()
    def _logits(self, model, ids, mask) -> torch.Tensor:
        device = next(model.parameters()).device
        return self.logits(model, ids.to(device), mask.to(device)).float().cpu()

    def predict(self, model, texts: list[str]) -> torch.Tensor:
        """Class probabilities ``[len(texts), num_classes]``."""
        return self._logits(model, *self.encode(texts)).softmax(-1)

    def predictions(self, model, texts: list[str]) -> list[dict]:
        return [{"text": text[:60], "label": int(p.argmax()), "probability": round(float(p.max()), 4)}
                for text, p in zip(texts, self.predict(model, texts), strict=True)]

    @torch.no_grad()
    def evaluate(self, model, split: str = "validation") -> dict:
        data, size = self.splits[split], self.config.eval_batch_size
        matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        losses = []
        for start in range(0, len(data), size):
            batch = self._batch(data[start:start + size])
            logits = self._logits(model, batch["inputs"], batch["attention_mask"])
            losses.append(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            matrix += confusion(logits.argmax(-1), batch["labels"], self.num_classes)
        total = int(matrix.sum())
        return {"accuracy": float(matrix.trace()) / max(1, total), "loss": float(sum(losses)) / max(1, total),
                "confusion": matrix.tolist()}


def confusion(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[true, predicted]`` counts."""
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes**2).view(
        num_classes, num_classes)
