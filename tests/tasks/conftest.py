import pytest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh ``$PERCEIVER_CACHE`` (generated data is built there) under ``tmp_path``."""
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "cache"))
    return tmp_path
