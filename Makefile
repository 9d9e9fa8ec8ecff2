# Two commands: `make run` and `make test`. Each creates .venv and installs the
# pinned environment (constraints.txt) only when pyproject.toml or the pins change.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
OUT ?= runs/default
ARGS ?=

.PHONY: run test lint docs bench notebooks clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ppvae run --out $(OUT) --force $(ARGS)  # runs/default is scratch: rerunnable

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests --durations=25  # two workers, one thread each (tests/conftest.py)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The documentation site: docs/_build/html. Warnings are errors; nothing is fetched; the
# notebooks are rendered from their stored outputs (make notebooks re-executes them).
docs: $(STAMP)
	$(PY) -m sphinx -b html -W --keep-going -q -j 2 docs docs/_build/html

bench: $(STAMP)
	$(PY) benchmarks/ppca_check.py --data-root ../shared/data

# Rebuild the notebooks from notebooks/src and execute them at full size, saving outputs.
notebooks: $(STAMP)
	$(PY) notebooks/_build.py && $(PY) notebooks/_execute.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache docs/_build docs/generated
