# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install ghostmap, run the whole loop on a simulated scan
#   make test   - create .venv, install ghostmap with its test extras, run the linter and the test suite
#   make docs   - build the documentation site into docs/_build/html (open docs/_build/html/index.html)
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; other versions pull a multi-GB CUDA build on machines without a GPU.
TORCH ?= torch==2.13.0

.PHONY: demo test lint docs install benchmark table1 clean browser

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/ghostmap demo

# Debian's Chromium, for the browser test of the label app (tests/test_webapp_e2e.py, skipped without it).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium not installed: the browser test will be skipped"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.installed browser lint
	$(VENV)/bin/pytest -q

# Sphinx + numpydoc + the PyData theme; the tutorial notebook is executed during the build.
# -W: any warning (a broken reference, an incomplete docstring) fails the build. No network needed.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

benchmark: $(VENV)/.installed
	$(PY) benchmarks/benchmark.py

# Issue 6's evidence: Table 1 on the paper's label geometry, the baselines, and py4DSTEM's own virtual
# imaging side by side. py4DSTEM needs numpy<2, so it gets a venv of its own.
PY4DSTEM_VENV ?= .venv-py4dstem
$(PY4DSTEM_VENV)/.installed:
	python3 -m venv $(PY4DSTEM_VENV)
	$(PY4DSTEM_VENV)/bin/python -m pip install -q py4DSTEM
	touch $@

table1: $(VENV)/.installed $(PY4DSTEM_VENV)/.installed
	$(PY) benchmarks/table1.py
	$(PY) benchmarks/py4dstem_compare.py --py4dstem-python $(PY4DSTEM_VENV)/bin/python

clean:
	rm -rf $(VENV) ghostmap-demo docs/_build docs/jupyter_execute
