"""The man-page language corpus, collected from an unpacked tree (no download in tests)."""

import gzip

from tasks.manpages import LANGUAGES, collect, split_of


def _page(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))


def test_pages_are_labelled_by_language_and_redirects_and_links_left_out(tmp_path):
    man = tmp_path / "usr/share/man"
    body = ".TH LS 1\n.SH NAME\nls \\- list directory contents\n" + "text " * 60
    _page(man / "man1/ls.1.gz", body)
    _page(man / "de/man1/ls.1.gz", body.replace("list directory contents", "Verzeichnisinhalte auflisten"))
    _page(man / "fr/man3/printf.3.gz", ".TH PRINTF 3\n" + "texte " * 60)
    _page(man / "man3/vprintf.3.gz", ".so man3/printf.3\n")
    (man / "man1/dir.1.gz").symlink_to(man / "man1/ls.1.gz")
    rows = collect(tmp_path)
    assert sorted(zip(rows["name"], (LANGUAGES[i] for i in rows["label"]), strict=True)) == [
        ("ls.1", "de"), ("ls.1", "en"), ("printf.3", "fr")]
    assert rows["split"][rows["name"].index("ls.1")] == split_of("ls.1")  # translations share a split
    assert "Verzeichnisinhalte" in rows["text"][rows["label"].index(LANGUAGES.index("de"))]


def test_splits_are_about_80_10_10_by_page_name():
    names = [f"page{i}.1" for i in range(5000)]
    shares = {s: sum(split_of(n) == s for n in names) / len(names) for s in ("train", "validation", "test")}
    assert 0.77 < shares["train"] < 0.83
    assert 0.08 < shares["validation"] < 0.12 and 0.08 < shares["test"] < 0.12
