"""Every notebook runs top to bottom (its code cells in order, in one namespace) and is stored
without outputs."""

import json
from pathlib import Path

import matplotlib
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def code_cells(path):
    cells = json.loads(path.read_text())["cells"]
    return [c for c in cells if c["cell_type"] == "code"]


def test_there_is_a_notebook_per_job_and_for_hip():
    assert {p.stem for p in NOTEBOOKS} == {"classify", "mlm", "autoencode", "hip"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    for cell in code_cells(path):
        assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NOTEBOOK_STEPS", "20")  # notebooks that train for minutes by default
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(code_cells(path)):
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}, code cell {i + 1}", "exec"), namespace)  # noqa: S102
