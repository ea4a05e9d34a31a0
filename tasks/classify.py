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
from tasks.settings import at_least, check_settings, rule

SPLIT_SIZES = rule(lambda sizes: all(k in ("train", "validation", "test") and isinstance(v, int)
                                     and not isinstance(v, bool) and v >= 1 for k, v in sizes.items()),
                   "{split: examples} with splits train, validation, test and integers >= 1")


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

    def __post_init__(self):
        check_settings(self, "task", {"max_seq_len": at_least(1), "eval_batch_size": at_least(1),
                                      "data_sizes": SPLIT_SIZES})  # architecture: ClassifyTask (--model)


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
    expected = "listops, manpages, a datasets directory (DatasetDict.save_to_disk) or a hub name"
    path = Path(config.data).expanduser()
    if path.exists() or config.data.startswith((".", "/", "~")) or config.data.count("/") > 1:
        if not path.is_dir():
            raise ValueError(f"data: expected {expected}; {config.data!r} is "
                             f"{'a file' if path.exists() else 'not there'}")
        if not (path / "dataset_dict.json").is_file():
            held = sorted(p.name for p in path.iterdir())[:5]
            raise ValueError(f"data: expected {expected}; {config.data!r} has no dataset_dict.json "
                             f"({'it is empty' if not held else f'it holds {held}'})")
        splits = datasets.load_from_disk(str(path))
    else:
        try:
            splits = datasets.load_dataset(config.data)
        except Exception as error:  # offline, unknown name, ...: datasets raises many kinds
            raise ValueError(f"data: expected {expected}; the hub dataset {config.data!r} could not be "
                             f"loaded ({type(error).__name__}: {error})") from error
    if not isinstance(splits, datasets.DatasetDict):
        raise ValueError(f"data: expected splits train and validation in {config.data!r}, got one split")
    missing = sorted({"train", "validation"} - set(splits))
    if missing:
        raise ValueError(f"data: expected splits train and validation in {config.data!r}, missing {missing}")
    for name, split in splits.items():
        for column in columns(config):
            if column not in split.column_names:
                raise ValueError(f"data: expected a column {column!r} in split {name!r}, "
                                 f"got {split.column_names}")
    return splits, None


def label_names(split, label_column: str) -> list[str] | None:
    """The class names: a ``ClassLabel``'s, or the sorted distinct strings of a string column;
    ``None`` for integer labels without names."""
    feature = split.features[label_column]
    if hasattr(feature, "names"):
        return list(feature.names)
    if getattr(feature, "dtype", None) in ("string", "large_string"):
        return sorted(set(split[label_column]))
    return None


def num_classes(split, label_column: str) -> int:
    feature = split.features[label_column]
    if hasattr(feature, "num_classes"):
        return feature.num_classes
    labels = [label for label in split[label_column] if isinstance(label, int)]
    if not labels:
        raise ValueError(f"data: expected integer or string labels in column {label_column!r}, got "
                         f"{feature}")
    return max(labels) + 1


class ClassifyTask:
    best_metric = "accuracy"

    def __init__(self, config: ClassifyConfig):
        architectures.check(config.architecture)
        self.config = config
        self.text_column, self.label_column = columns(config)
        self.splits, self.transform = load_splits(config)
        self.label_names = label_names(self.splits["train"], self.label_column)
        if self.label_names is not None and not hasattr(self.splits["train"].features[self.label_column],
                                                        "names"):
            self.splits = self._string_labels_to_ids(self.splits)
        self.num_classes = len(self.label_names) if self.label_names else num_classes(
            self.splits["train"], self.label_column)
        self.skipped = 0
        for name in list(self.splits):
            self.splits[name] = self._check_records(name, self.splits[name])

    def _string_labels_to_ids(self, splits):
        """String labels as class ids (their place in ``label_names``); a name the train split
        lacks becomes -1, a bad record (``_check_records``)."""
        ids = {name: i for i, name in enumerate(self.label_names)}
        column = self.label_column
        return type(splits)({name: split.map(lambda rows: {column: [ids.get(v, -1) for v in rows[column]]},
                                             batched=True) for name, split in splits.items()})

    def _check_records(self, name: str, split):
        """Empty texts and labels outside ``[0, num_classes)`` fail, naming the record, or are
        dropped with ``skip_bad`` (and counted in ``skipped``)."""
        texts, labels = split[self.text_column], split[self.label_column]
        bad = {}
        for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
            if not isinstance(label, int) or not 0 <= label < self.num_classes:
                bad[i] = (f"{self.label_column}: a class the train split lacks, expected one of "
                          f"{self.label_names}" if self.label_names and label == -1 else
                          f"{self.label_column}={label!r}, expected an integer in [0, {self.num_classes})")
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

    def name(self, label: int) -> str:
        return self.label_names[label] if self.label_names else str(label)

    def predictions(self, model, texts: list[str]) -> list[dict]:
        return [{"text": text[:60], "label": self.name(int(p.argmax())), "label_id": int(p.argmax()),
                 "probability": round(float(p.max()), 4)}
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
