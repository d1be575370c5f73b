# The two commands of the README:
#   make book   - set up .venv if needed, generate the data, execute every notebook with
#                 papermill (preset $(PRESET), default cpu), build the HTML book -> _build/html
#   make test   - set up .venv if needed, run the unit tests, then the whole book under the
#                 smoke preset (-> _build/smoke/_build/html)
# CI (.ci/run) also runs make paper-ci: the whole book under paper_ci, the paper preset's
# geometry, model widths and protocol with small sizes (-> _build/paper_ci/_build/html)
# GPU, paper-sized: make book PRESET=paper DEVICE=cuda

SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PRESET ?= cpu
DEVICE ?= auto
SEED ?= 0
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
U2AD := $(VENV)/bin/u2ad
STAMP := $(VENV)/.u2ad-installed
# pip on some machines prints one harmless line per configured-but-absent local index
PIPFILTER := grep -v "^WARNING: Location .* is ignored" || true

.PHONY: help venv book publish test unit smoke-book paper-ci budget bench lab clean clean-data

help:
	@echo "make book  [PRESET=cpu|cpu_long|smoke|paper] [DEVICE=auto|cpu|cuda|mps]   build the book"
	@echo "make test                                                    unit tests + smoke book"
	@echo "make publish [PRESET=cpu] [SCHEDULER=tcp://host:port]        the complete book: full grids and the budget sweep (over an hour on 2 cores)"
	@echo "make paper-ci                                                the paper preset's code paths, small sizes (CI)"
	@echo "make budget [PRESET=cpu]                                     training-budget sweep (epochs x 0.5, 1, 2, 4; > 1 h on 2 cores)"
	@echo "make bench                                                   MC engine benchmark (JSON)"
	@echo "make lab                                                     JupyterLab on notebooks/"

# The environment: a venv with pip, reused while pyproject.toml and constraints.txt are unchanged.
# constraints.txt pins torch==2.13.0 (a CPU wheel; a bare torch>=2.4 pulls ~3 GB of CUDA wheels).
# --no-compile: pip does not compile every installed file to bytecode (measured: 129 -> 65 s for
# this install on 2 cores); scripts/compile_imports.py then writes the bytecode of just the modules
# the notebook kernels import, which every kernel and worker would otherwise compile again where
# PYTHONDONTWRITEBYTECODE is set (setup() in a kernel: 8.3 -> 2.3 s measured).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(PIPFILTER)
	$(PY) -m pip install -q --no-compile -c constraints.txt -e ".[test]" 2>&1 | $(PIPFILTER)
	$(PY) -m pip check
	$(PY) scripts/compile_imports.py
	@touch $@

venv: $(STAMP)

book: $(STAMP)
	$(U2AD) book --preset $(PRESET) --device $(DEVICE) --seed $(SEED)
	$(U2AD) sitecheck _build/html

# The complete book that is published: the preset with its full grids (every crossover point with an
# S3 adaptation, chapter 12's budget sweep, both cohorts in every table), the sweeps on Dask (a
# LocalCluster, or SCHEDULER=tcp://host:port), into _build/publish. Resumable: finished runs, sweep
# points and executed chapters are reused; run after make book, it reuses the book's trained models.
publish: $(STAMP)
	$(U2AD) book --preset $(PRESET) --device $(DEVICE) --seed $(SEED) --publish $(if $(SCHEDULER),--scheduler $(SCHEDULER))
	$(U2AD) sitecheck _build/publish/_build/html

unit: $(STAMP)
	$(PY) -m pytest -q

smoke-book: $(STAMP)
	$(U2AD) book --preset smoke --device cpu --seed $(SEED) --path-output _build/smoke

# pytest exits non-zero (5) when it collects no test, which fails this target too. The smoke book
# executes every notebook (--force: no executed copy is reused) and its pages are then checked:
# images, internal links, no machine path or traceback (and, with chromium installed, in a browser).
test: $(STAMP)
	$(PY) -m pytest -q
	$(U2AD) book --preset smoke --device cpu --seed $(SEED) --path-output _build/smoke --force
	$(U2AD) sitecheck _build/smoke/_build/html --browser

# the paper preset's code paths on a CPU (about 8 minutes on 2 cores); CI runs it after make test
paper-ci: $(STAMP)
	$(U2AD) book --preset paper_ci --device cpu --seed $(SEED) --path-output _build/paper_ci

# The training-budget sweep (chapter 12 reads it under cpu): every epoch count x 0.5, 1, 2, 4,
# on Dask, into runs/$(PRESET)/sweeps/budget/ (results.csv); finished points are reused.
budget: $(STAMP)
	$(U2AD) budget --preset $(PRESET) --device $(DEVICE) --seed $(SEED)

bench: $(STAMP)
	$(U2AD) bench mc --preset $(PRESET) --k 10 --json

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf _build book/notebooks .pytest_cache

clean-data:
	rm -rf data/smoke data/cpu data/paper data/paper_ci runs
