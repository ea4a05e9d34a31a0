"""Largest relative logit error against transformers over every comparison in tests/convert/.

    .venv/bin/python benchmarks/equivalence.py
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.convert import common  # noqa: E402

code = pytest.main(["-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "convert")])
largest = max(common.ERRORS)
print(f"{len(common.ERRORS)} comparisons, largest relative error {largest:.2e} (tested bound 1e-4)")
sys.exit(code)
