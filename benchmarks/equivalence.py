"""Largest relative logit error against transformers over the configurations in tests/test_convert.py.

    .venv/bin/python benchmarks/equivalence.py
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tests.test_convert as cases  # noqa: E402

errors = []
measure = cases.relative_error
cases.relative_error = lambda a, b: errors.append(measure(a, b)) or errors[-1]
code = pytest.main(["-q", "-p", "no:cacheprovider", cases.__file__])
print(f"{len(errors)} comparisons, largest relative error {max(errors):.2e} (tested bound 1e-4)")
sys.exit(code)
