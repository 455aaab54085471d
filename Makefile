# The two commands: `make run` and `make test`. Each makes .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PEERS_STAMP := $(VENV)/.installed-peers
RUN_CONFIG ?= experiments/configs/icl_linreg.py:quick
# Empty: the launcher writes to runs/NAME_ARG (e.g. runs/icl_linreg_quick).
RUN_WORKDIR ?=
# Transparent huge pages for glibc's malloc (unless GLIBC_TUNABLES is already set): XLA:CPU
# maps a fresh temporary buffer per step, and 2 MiB pages fault it in 512x less often
# (jaxlab/train/host_memory.py). glibc reads this only at a process's start.
HUGEPAGES := $(if $(GLIBC_TUNABLES),,GLIBC_TUNABLES=glibc.malloc.hugetlb=1)

.PHONY: run test repro bench notebooks lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@ $(STAMP)

$(PEERS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev,peers]"
	touch $@ $(DEV_STAMP) $(STAMP)

## make run: install and run the default study on its quick setting.
run: $(STAMP)
	$(HUGEPAGES) $(PY) -m experiments.run --config=$(RUN_CONFIG) $(if $(RUN_WORKDIR),--workdir=$(RUN_WORKDIR))

## make test: install with dev extras and run the whole suite (repro tests skipped).
test: $(DEV_STAMP)
	$(PY) -m ruff check jaxlab experiments benchmarks tests colab
	$(PY) -m pytest -n 2 --dist loadfile -q

## make repro: the quick-scale science assertions (minutes each).
repro: $(DEV_STAMP)
	$(HUGEPAGES) $(PY) -m pytest -m repro -q

## make bench: side-by-side timings against peers; tables printed, JSON in benchmarks/results/.
bench: $(PEERS_STAMP)
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.spectral
	$(PY) -m benchmarks.ntk
	$(PY) -m benchmarks.icl_train
	$(PY) -m benchmarks.optim_step

## make notebooks: re-execute colab/*.ipynb on their quick settings and save them with outputs.
notebooks: $(DEV_STAMP)
	$(PY) colab/execute.py

lint: $(DEV_STAMP)
	$(PY) -m ruff check jaxlab experiments benchmarks tests colab

clean:
	rm -rf $(VENV) runs .pytest_cache
