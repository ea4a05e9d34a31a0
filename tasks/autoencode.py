"""The multimodal autoencoding job: image + audio + label in one input array, reconstructed by
one decoder through per-modality output queries (``presets.multimodal_autoencoder``).

Data is an audio-visual folder (``DIR/{split}/{class}/{name}.png`` + ``{name}.wav``), either
``av-digits`` (built once into ``$PERCEIVER_CACHE``, see ``tasks.av_digits``) or a local path;
files are decoded by ``num_workers`` processes into Arrow tables.

Training decodes a random ``query_fraction`` of the image and audio queries of each example, as
the paper trains on subsampled outputs, and masks each example's label with probability
``label_mask_prob``; ``shift_pixels`` / ``shift_samples`` move each training image and waveform
by a random offset (augmentation: the label overfits 4,000 examples without it). The loss is
each modality's MSE divided by the MSE of the training set's mean (so both modalities count by
their improvement over that baseline, whatever their scale), plus ``label_weight`` times the
label's cross-entropy. Evaluation decodes everything with every label masked, so label accuracy
measures what the model infers from image and audio. Metrics:
PSNR of image (pixels in [0, 1]) and audio (full scale 1), each beside the PSNR of the training
set's mean image / mean waveform, and label accuracy.
"""

from __future__ import annotations

import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from perceiver import presets
from tasks.av_digits import write_wav
from tasks.classify import cache_dir
from tasks.settings import at_least, at_least_zero, between, check_settings, probability, rule

IMAGE_SHAPE = rule(lambda shape: len(shape) == 2 and all(isinstance(n, int) and n >= 1 for n in shape),
                   "two integers >= 1 (height, width)")


@dataclass
class AutoencodeConfig:
    data: str = "av-digits"
    image_shape: tuple[int, int] = (28, 28)
    sample_rate: int = 8000
    num_samples: int = 4096  # shorter clips are zero-padded, longer ones refused
    query_fraction: float = 0.5  # share of image and audio queries decoded per training example
    label_mask_prob: float = 0.5  # training: chance that an example's label is masked
    label_weight: float = 0.1  # weight of the label's cross-entropy beside the two relative MSEs
    shift_pixels: int = 0  # training: move each image by up to this many pixels (zeros enter)
    shift_samples: int = 0  # training: delay or advance each waveform by up to this many samples
    skip_bad: bool = False  # drop unreadable records (and report how many) instead of failing
    num_workers: int = 2  # processes decoding PNG/WAV files
    model: dict = field(default_factory=dict)  # presets.multimodal_autoencoder arguments
    eval_batch_size: int = 100

    def __post_init__(self):
        check_settings(self, "task", {
            "image_shape": IMAGE_SHAPE, "sample_rate": at_least(1), "num_samples": at_least(1),
            "query_fraction": between(0, 1, low_open=True), "label_mask_prob": probability,
            "label_weight": at_least_zero, "shift_pixels": at_least(0), "shift_samples": at_least(0),
            "num_workers": at_least(0), "eval_batch_size": at_least(1)})


def read_png(path, shape) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on damaged files
        raise ValueError(f"{path}: unreadable image ({type(error).__name__}: {error})") from error
    if pixels.shape != tuple(shape):
        raise ValueError(f"{path}: expected an image of {shape[0]}x{shape[1]} pixels, got "
                         f"{pixels.shape[0]}x{pixels.shape[1]}")
    return pixels


def read_wav(path, sample_rate: int, num_samples: int) -> np.ndarray:
    """16-bit mono PCM, zero-padded at the end to ``num_samples``."""
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            frames = f.readframes(f.getnframes())
    except Exception as error:  # wave raises wave.Error, EOFError, RuntimeError, ... on damaged files
        raise ValueError(f"{path}: unreadable WAV ({type(error).__name__}: {error})") from error
    if (channels, width, rate) != (1, 2, sample_rate):
        raise ValueError(f"{path}: expected 16-bit mono audio at {sample_rate} Hz, got {8 * width}-bit, "
                         f"{channels} channel(s) at {rate} Hz")
    samples = np.frombuffer(frames[:len(frames) // 2 * 2], "<i2")
    if len(samples) == 0 or len(samples) > num_samples:
        raise ValueError(f"{path}: expected 1 to {num_samples} samples, got {len(samples)}")
    return np.pad(samples, (0, num_samples - len(samples)))


def _decode(rows, shape, sample_rate, num_samples):
    out = {"image": [], "audio": [], "error": []}
    for stem in rows["stem"]:
        try:
            image, audio, error = read_png(stem + ".png", shape), read_wav(stem + ".wav", sample_rate,
                                                                            num_samples), ""
        except ValueError as failure:
            image, audio, error = np.zeros(shape, np.uint8), np.zeros(num_samples, np.int16), str(failure)
        out["image"].append(image)
        out["audio"].append(audio)
        out["error"].append(error)
    return out


def load_folder(root, config: AutoencodeConfig):
    """``(DatasetDict of image uint8 [H, W], audio int16 [N], label, stem; class names; skipped)``."""
    import datasets

    root = Path(root)
    train = root / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    if not classes:
        raise ValueError(f"data: expected class folders in {str(root / 'train')!r} "
                         "(DIR/{train,validation}/{class}/{name}.png + .wav)")
    features = datasets.Features({
        "stem": datasets.Value("string"), "label": datasets.ClassLabel(names=classes),
        "image": datasets.Array2D(tuple(config.image_shape), "uint8"),
        "audio": datasets.Sequence(datasets.Value("int16"), length=config.num_samples),
        "error": datasets.Value("string")})
    splits, skipped = {}, 0
    for split in ("train", "validation", "test"):
        if not (root / split).is_dir():
            if split != "test":
                raise ValueError(f"data: expected a {split!r} folder in {str(root)!r}")
            continue
        stems, labels = [], []
        for label, name in enumerate(classes):
            pngs = sorted((root / split / name).glob("*.png"))
            if not pngs and split == "train":
                raise ValueError(f"data: expected NAME.png + NAME.wav files in the class folder "
                                 f"{str(root / split / name)!r}, found none")
            for png in pngs:
                stems.append(str(png.with_suffix("")))
                labels.append(label)
        if not stems:
            raise ValueError(f"data: expected NAME.png + NAME.wav files in the class folders of "
                             f"{str(root / split)!r}, found none")
        unknown = sorted({p.name for p in (root / split).iterdir() if p.is_dir()} - set(classes))
        if unknown:
            raise ValueError(f"data: classes {unknown} in {split!r} are not in train's {classes}")
        table = datasets.Dataset.from_dict({"stem": stems, "label": labels})
        workers = config.num_workers if len(stems) > 512 and config.num_workers > 1 else None
        table = table.map(_decode, batched=True, batch_size=256, features=features, num_proc=workers,
                          fn_kwargs=dict(shape=tuple(config.image_shape), sample_rate=config.sample_rate,
                                         num_samples=config.num_samples))
        errors = [e for e in table["error"] if e]
        if errors and not config.skip_bad:
            raise ValueError(f"{len(errors)} unreadable record(s) in {split!r}, first: {errors[0]} "
                             "(task.skip_bad=true drops them)")
        if errors:
            table = table.filter(lambda e: not e, input_columns="error")
            skipped += len(errors)
        splits[split] = table.remove_columns("error").with_format("numpy")
    if skipped:
        print(f"data: skipped {skipped} unreadable record(s)", file=sys.stderr)
    return datasets.DatasetDict(splits), classes, skipped


def open_folder(config):
    """``load_folder`` of ``config.data``: ``av-digits`` (built on first use) or a folder path."""
    root = config.data
    if root == "av-digits":
        from tasks import av_digits

        root = av_digits.build(cache_dir() / "av-digits-seed0")
    if not Path(root).is_dir():
        raise ValueError(f"data: expected av-digits or an audio-visual folder, got {config.data!r}")
    return load_folder(root, config)


def decode_rows(rows) -> dict:
    """Stored uint8 pixels and int16 samples as floats: ``image [B, H, W]`` in [0, 1], ``audio
    [B, N]`` in [-1, 1), and ``label [B]`` (long) when the rows have one."""
    out = {"image": torch.from_numpy(np.asarray(rows["image"]).astype(np.float32) / 255),
           "audio": torch.from_numpy(np.asarray(rows["audio"]).astype(np.float32) / 32768)}
    if "label" in rows:
        out["label"] = torch.from_numpy(np.asarray(rows["label"]).astype(np.int64))
    return out


def psnr(estimate: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-example peak signal-to-noise ratio in dB: ``[B, ...] -> [B]``."""
    mse = (estimate - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(peak**2 / mse)


class AutoencodeTask:
    best_metric = "label_accuracy"

    def __init__(self, config: AutoencodeConfig, classes: list[str] | None = None):
        """With ``classes`` (the names a trained run recorded) no data is read: the task can only
        reconstruct files (``predict_files``)."""
        self.config = config
        if classes is not None:
            self.splits, self.classes, self.skipped = {}, list(classes), 0
            self.patch = self.model_settings()["patch_size"]
            return
        self.splits, self.classes, self.skipped = open_folder(config)
        self.patch = self.model_settings()["patch_size"]
        train = decode_rows(self.splits["train"][:])
        images, audio = train["image"], train["audio"]
        self.mean_image, self.mean_audio = images.mean(0), audio.mean(0)
        # the mean baseline's MSE: each modality's loss is measured relative to it
        self.baseline_mse = {"image": float((images - self.mean_image).pow(2).mean()),
                             "audio": float((audio - self.mean_audio).pow(2).mean())}

    @property
    def label_names(self) -> list[str]:
        return self.classes

    def model_settings(self) -> dict:
        return dict(image_shape=tuple(self.config.image_shape), num_samples=self.config.num_samples,
                    num_classes=len(self.classes), patch_size=4, samples_per_patch=16) | self.config.model

    def model_config(self):
        return presets.multimodal_autoencoder(**self.model_settings())

    def num_train_examples(self) -> int:
        return len(self.splits["train"])

    def arrays(self, rows) -> dict:
        """The model's inputs for stored rows: ``image [B, 1, H, W]``, ``audio [B, N]``, ``label [B]``."""
        out = decode_rows(rows)
        return out | {"image": out["image"][:, None]}

    def train_batch(self, indices, generator=None):
        inputs = self.arrays(self.splits["train"][indices])
        inputs["image"] = shift(inputs["image"], self.config.shift_pixels, (-2, -1), generator)
        inputs["audio"] = shift(inputs["audio"], self.config.shift_samples, (-1,), generator)
        batch = len(indices)
        sizes = {"image": inputs["image"][0, 0].numel() // self.patch**2,
                 "audio": self.config.num_samples // self.model_settings()["samples_per_patch"]}
        index = {name: torch.rand(batch, n, generator=generator).argsort(1)[
                 :, :max(1, round(n * self.config.query_fraction))].sort(1).values
                 for name, n in sizes.items()}
        masked = torch.rand(batch, generator=generator) < self.config.label_mask_prob
        return {"inputs": inputs, "query_index": index, "label_mask": masked}

    def targets(self, inputs) -> dict:
        """Per-query targets: image patches ``[B, P, p*p]``, audio patches ``[B, A, s]``."""
        spp = self.model_settings()["samples_per_patch"]
        return {"image": rearrange(inputs["image"], "b c (h p) (w q) -> b (h w) (p q c)", p=self.patch,
                                   q=self.patch),
                "audio": rearrange(inputs["audio"], "b (m s) -> b m s", s=spp)}

    def loss(self, model, batch):
        inputs, index = batch["inputs"], batch["query_index"]
        out = model(inputs, query_index=index, modality_mask={"label": batch["label_mask"]}).logits
        targets = self.targets(inputs)
        parts = {}
        for name in ("image", "audio"):
            chosen = index[name][..., None].expand(-1, -1, targets[name].shape[-1])
            parts[f"{name}_mse"] = F.mse_loss(out[name].float(), targets[name].gather(1, chosen))
        label = out["label"].float().squeeze(1)
        parts["label_ce"] = F.cross_entropy(label, inputs["label"])
        loss = sum(parts[f"{name}_mse"] / self.baseline_mse[name] for name in ("image", "audio"))
        loss = loss + self.config.label_weight * parts["label_ce"]
        accuracy = (label.argmax(-1) == inputs["label"]).float().mean()
        return loss, {k: v.item() for k, v in parts.items()} | {"label_accuracy": accuracy.item()}

    @torch.no_grad()
    def reconstruct(self, model, inputs: dict) -> dict:
        """Label masked, everything decoded: image ``[B, 1, H, W]``, audio ``[B, N]``, label
        probabilities ``[B, K]``."""
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        masked = torch.ones(len(inputs["label"]), dtype=torch.bool, device=device)
        out = {k: v.float().cpu() for k, v in model(inputs, modality_mask={"label": masked}).logits.items()}
        h, w = self.config.image_shape
        return {"image": rearrange(out["image"], "b (h w) (p q c) -> b c (h p) (w q)", h=h // self.patch,
                                   p=self.patch, q=self.patch).clamp(0, 1),
                "audio": out["audio"].flatten(1).clamp(-1, 1),
                "label": out["label"].squeeze(1).softmax(-1)}

    @torch.no_grad()
    def evaluate(self, model, split: str = "validation") -> dict:
        data, size = self.splits[split], self.config.eval_batch_size
        sums = dict.fromkeys(["image_psnr", "audio_psnr", "image_psnr_mean_baseline",
                              "audio_psnr_mean_baseline", "label_accuracy"], 0.0)
        for start in range(0, len(data), size):
            inputs = self.arrays(data[start:start + size])
            out = self.reconstruct(model, inputs)
            sums["image_psnr"] += float(psnr(out["image"], inputs["image"]).sum())
            sums["audio_psnr"] += float(psnr(out["audio"], inputs["audio"]).sum())
            sums["image_psnr_mean_baseline"] += float(psnr(self.mean_image.expand_as(inputs["image"][:, 0]),
                                                           inputs["image"][:, 0]).sum())
            sums["audio_psnr_mean_baseline"] += float(psnr(self.mean_audio.expand_as(inputs["audio"]),
                                                           inputs["audio"]).sum())
            sums["label_accuracy"] += float((out["label"].argmax(-1) == inputs["label"]).sum())
        return {k: v / max(1, len(data)) for k, v in sums.items()}

    def write_samples(self, model, directory, split: str = "validation", count: int = 10) -> list[Path]:
        """Originals and reconstructions of ``count`` examples spread over ``split`` (so over its
        classes) as ``{i}-{class}-original.png/.wav`` and ``{i}-{class}-reconstruction.png/.wav``."""
        size = len(self.splits[split])
        inputs = self.arrays(self.splits[split][[i * size // count for i in range(min(count, size))]])
        return save_reconstructions(self.reconstruct(model, inputs), inputs, directory, self.classes)

    def predict_files(self, model, stems: list[str], directory) -> list[dict]:
        """Reconstruct ``{stem}.png`` + ``{stem}.wav`` pairs (label unknown) into ``directory``."""
        images = [read_png(s + ".png", self.config.image_shape) for s in stems]
        audio = [read_wav(s + ".wav", self.config.sample_rate, self.config.num_samples) for s in stems]
        inputs = self.arrays({"image": np.stack(images), "audio": np.stack(audio),
                              "label": np.zeros(len(stems), np.int64)})
        out = self.reconstruct(model, inputs)
        names = [Path(s).name for s in stems]
        paths = save_reconstructions(out, inputs, directory, self.classes, names=names)
        return [{"input": stem, "label": self.classes[int(p.argmax())], "label_id": int(p.argmax()),
                 "probability": round(float(p.max()), 4),
                 "image_psnr": round(float(psnr(out["image"][i:i + 1], inputs["image"][i:i + 1])), 2),
                 "audio_psnr": round(float(psnr(out["audio"][i:i + 1], inputs["audio"][i:i + 1])), 2),
                 "outputs": [str(p) for p in paths if p.name.startswith(Path(stem).name + "-")]}
                for i, (stem, p) in enumerate(zip(stems, out["label"], strict=True))]


def shift(x: torch.Tensor, most: int, dims: tuple[int, ...], generator=None) -> torch.Tensor:
    """Each example of ``x [B, ...]`` moved along the (negative) ``dims`` by its own random offsets
    in ``[-most, most]``, zeros filling what is uncovered (training augmentation: the autoencoder
    reconstructs the moved input, and the label must survive the move)."""
    if most <= 0:
        return x
    offsets = torch.randint(-most, most + 1, (len(x), len(dims)), generator=generator).tolist()
    moved = []
    for example, offset in zip(x, offsets, strict=True):
        pad = [0] * (2 * max(-d for d in dims))  # F.pad: (left, right) per dim, last dim first
        for d, o in zip(dims, offset, strict=True):
            pad[2 * (-d - 1)], pad[2 * (-d - 1) + 1] = o, -o  # a negative pad crops
        moved.append(F.pad(example, pad))
    return torch.stack(moved)


def save_reconstructions(out, inputs, directory, classes, names=None) -> list[Path]:
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(out["image"])):
        name = names[i] if names else f"{i}-{classes[int(inputs['label'][i])]}"
        for kind, image, audio in (("original", inputs["image"][i], inputs["audio"][i]),
                                   ("reconstruction", out["image"][i], out["audio"][i])):
            pixels = (image[0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(directory / f"{name}-{kind}.png")
            write_wav(directory / f"{name}-{kind}.wav", audio.numpy())
            paths += [directory / f"{name}-{kind}.png", directory / f"{name}-{kind}.wav"]
    return paths
