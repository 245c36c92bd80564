# Two commands set everything up on a fresh machine:
#   make train   venv + install + a small pretraining run (experiments/small.py)
#   make test    venv + install + the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORKDIR ?= runs/small
CONFIG ?= experiments/small.py

.PHONY: venv train test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

train: venv
	$(PY) -m dvlm_jax.train --config $(CONFIG) --workdir $(WORKDIR)

test: venv
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) runs .pytest_cache
