"""The mae job: masked auto-encoding pre-training of a HiP on image + audio + label data.

The data is an audio-visual folder, as for the autoencode job (``av-digits`` or a local folder).
Each example is three modalities: the image's pixels ``[H*W, 1]``, the audio in patches
``[N/16, 16]`` and the label one-hot ``[1, K]``. Training hides ``mask_ratio`` of each modality's
elements (zeros: the model has no mask token; the one-element label is always hidden) and scores
their reconstruction (``perceiver.hip.mae``). Evaluation hides the same share with fixed draws and
reports each modality's MSE on the hidden elements, and the accuracy of the inferred label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from perceiver.hip import hip_config
from perceiver.hip.mae import mask_elements, masked_loss
from tasks.autoencode import IMAGE_SHAPE, decode_rows, open_folder
from tasks.settings import at_least, between, check_settings

SAMPLES_PER_PATCH = 16


@dataclass
class MAEConfig:
    data: str = "av-digits"
    image_shape: tuple[int, int] = (28, 28)
    sample_rate: int = 8000
    num_samples: int = 4096
    mask_ratio: float = 0.5
    architecture: str = "hip-mini"  # a HiP variant: hip-mini, hip-16, hip-256, hip-16x3
    model: dict = field(default_factory=dict)  # HiP.Config fields
    skip_bad: bool = False
    num_workers: int = 2
    eval_batch_size: int = 100

    def __post_init__(self):
        check_settings(self, "task", {
            "image_shape": IMAGE_SHAPE, "sample_rate": at_least(1),
            "num_samples": at_least(SAMPLES_PER_PATCH),
            "mask_ratio": between(0, 1, low_open=True), "num_workers": at_least(0),
            "eval_batch_size": at_least(1)})  # architecture: MAETask (--model)


class MAETask:
    best_metric = "label_accuracy"

    def __init__(self, config: MAEConfig):
        if not config.architecture.startswith("hip-"):
            raise ValueError(f"--model: the mae job pre-trains a HiP (hip-mini, hip-16, ...), got "
                             f"{config.architecture!r}")
        self.config = config
        self.splits, self.classes, self.skipped = open_folder(config)

    def modalities(self) -> dict[str, tuple[int, int]]:
        h, w = self.config.image_shape
        audio = (self.config.num_samples // SAMPLES_PER_PATCH, SAMPLES_PER_PATCH)
        return {"image": (h * w, 1), "audio": audio, "label": (1, len(self.classes))}

    def model_config(self):
        variant = self.config.architecture.removeprefix("hip-")
        return hip_config(variant, self.modalities(), **self.config.model)

    def num_train_examples(self) -> int:
        return len(self.splits["train"])

    def arrays(self, rows) -> dict:
        x = decode_rows(rows)
        return {"image": rearrange(x["image"], "b h w -> b (h w) 1"),
                "audio": rearrange(x["audio"], "b (m s) -> b m s", s=SAMPLES_PER_PATCH),
                "label": F.one_hot(x["label"], len(self.classes)).float()[:, None]}

    def train_batch(self, indices, generator=None, split: str = "train"):
        targets = self.arrays(self.splits[split][indices])
        inputs, hidden = mask_elements(targets, self.config.mask_ratio, generator)
        return {"inputs": inputs, "targets": targets, "hidden": hidden}

    def loss(self, model, batch):
        out = model(batch["inputs"]).logits
        parts = {f"{n}_mse": masked_loss({n: out[n].detach()}, batch["targets"], {n: h}).item()
                 for n, h in batch["hidden"].items()}
        return masked_loss(out, batch["targets"], batch["hidden"]), parts

    @torch.no_grad()
    def evaluate(self, model, split: str = "validation") -> dict:
        generator = torch.Generator().manual_seed(1234)
        device = next(model.parameters()).device
        data, size = self.splits[split], self.config.eval_batch_size
        sums, correct = {}, 0
        for start in range(0, len(data), size):
            batch = self.train_batch(list(range(start, min(start + size, len(data)))), generator, split)
            out = model({k: v.to(device) for k, v in batch["inputs"].items()}).logits
            out = {k: v.float().cpu() for k, v in out.items()}
            for name, hide in batch["hidden"].items():
                error = (out[name] - batch["targets"][name]).square()[hide].mean()
                sums[name] = sums.get(name, 0.0) + float(error) * len(hide)
            # a one-element modality (the label) is always hidden: the model infers it
            label = batch["targets"]["label"][:, 0].argmax(-1)
            correct += int((out["label"][:, 0].argmax(-1) == label).sum())
        return {f"{name}_masked_mse": total / len(data) for name, total in sums.items()} | {
            "label_accuracy": correct / len(data)}
