"""Man pages -> language: real long documents for byte-level classification.

Debian's ``manpages`` and ``manpages-dev`` (English) and the translations
``manpages-{de,es,fr,it,nl,pl,pt-br,ru}`` are fetched with ``apt-get download`` and unpacked
with ``dpkg-deb -x`` (nothing is installed); each page's roff source is one example, labelled
with its language. Redirect pages (``.so other-page``) and symbolic links are left out. A page
name goes to one split only (about 80/10/10 by a hash of the name), so no translation of a test
page is trained on.

    splits(cache_dir)  -> DatasetDict train/validation/test with columns text, label (ClassLabel)
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from pathlib import Path

LANGUAGES = ("de", "en", "es", "fr", "it", "nl", "pl", "pt_BR", "ru")
PACKAGES = ["manpages", "manpages-dev", "manpages-pt-br"] + [
    f"manpages-{lang}" for lang in LANGUAGES if lang not in ("en", "pt_BR")]


def split_of(name: str) -> str:
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def collect(root: Path) -> dict[str, list]:
    """Pages under an unpacked ``root/usr/share/man``: ``{"text", "label", "name", "split"}`` lists."""
    rows = {"text": [], "label": [], "name": [], "split": []}
    man = root / "usr" / "share" / "man"
    for label, lang in enumerate(LANGUAGES):
        base = man if lang == "en" else man / lang
        for path in sorted(base.glob("man*/*.gz")):
            if path.is_symlink():
                continue
            text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
            if text.lstrip().startswith(".so ") or len(text) < 200:
                continue
            rows["text"].append(text)
            rows["label"].append(label)
            rows["name"].append(path.name.removesuffix(".gz"))
            rows["split"].append(split_of(path.name.removesuffix(".gz")))
    return rows


def download(directory: Path) -> Path:
    """Fetch and unpack the packages into ``directory/root``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ValueError(f"data: manpages needs Debian's {tool} to fetch the pages; use a saved "
                             "datasets directory instead")
    debs = directory / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise ValueError(f"data: apt-get download failed: {result.stderr.strip()[-300:]}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(directory / "root")], check=True)
    return directory / "root"


def splits(cache_dir: str | Path):
    """The man-page language dataset, built once in ``cache_dir`` and reused."""
    import datasets

    path = Path(cache_dir) / "manpages-language"
    if not (path / "dataset_dict.json").exists():
        work = path.with_name(path.name + ".work")
        shutil.rmtree(work, ignore_errors=True)
        rows = collect(download(work))
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=list(LANGUAGES)),
                                      "name": datasets.Value("string"), "split": datasets.Value("string")})
        table = datasets.Dataset.from_dict(rows, features=features)
        result = datasets.DatasetDict({s: table.filter(lambda x, s=s: x == s, input_columns="split")
                                       .remove_columns("split") for s in ("train", "validation", "test")})
        tmp = path.with_name(path.name + ".tmp")
        result.save_to_disk(str(tmp))
        tmp.rename(path)  # atomic: a crash mid-build leaves no half-written dataset
        shutil.rmtree(work, ignore_errors=True)
    return datasets.load_from_disk(str(path))
