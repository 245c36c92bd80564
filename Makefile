# Two commands set everything up on a fresh machine:
#   make train   venv + install + a small pretraining run (experiments/small.py)
#   make test    venv + install + the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= experiments/small.py
# SEED=n reruns the demo on another initialisation and data order (train.seed, data.seed)
# into its own run directory; without it, seed 0 into runs/small.
SEED ?=
WORKDIR ?= runs/small$(if $(SEED),_seed$(SEED))
SEED_FLAGS := $(if $(SEED),--config.train.seed=$(SEED) --config.data.seed=$(SEED))

.PHONY: venv train test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Real data: builds the data sets CONFIG's data.mixture names into DATA_DIR the first time
# (small.py: shapes_single, about 20 s on 2 cores; an existing build is left alone), then
# trains through the Grain pipeline.
DATA_DIR ?= data

train: venv
	$(PY) -m dvlm_jax.build_data --config $(CONFIG) --data_dir $(DATA_DIR)
	$(PY) -m dvlm_jax.train --config $(CONFIG) --workdir $(WORKDIR) \
	  --config.data.source=tfds --config.data.data_dir=$(DATA_DIR) $(SEED_FLAGS)

# One pytest worker per core, whole files per worker (tests in a file share trained
# fixtures; test processes share one XLA compilation cache, tests/conftest.py); the suite
# is compile- and subprocess-bound: 20.8 min of tests (365 tests) on the project's 2-core CPU
# VM from a fresh clone with a cold compilation cache, the machine otherwise idle (2026-12-08).
test: venv
	$(PY) -m pytest -n auto --dist loadfile --durations=25 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
