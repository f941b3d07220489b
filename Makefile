# `make` builds the environment and runs the pipeline; `make test` runs the tests.
VENV   ?= .venv
PYTHON ?= python3
SHARED ?= $(abspath ../shared)
PY     := $(VENV)/bin/python
# DVC runs each stage's `python` from PATH: make it the project's environment.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# The local mirrors of the remote inputs (see README "Offline"; WOOF_WEIGHTS: a folder of
# <model.name>.safetensors): locations, given as
# environment variables that DVC does not track, so the lock records the params, not the paths.
MIRROR  := WOOF_FETCH_URL=$(SHARED)/data/imagewoof2-160.tgz \
           WOOF_WEIGHTS=$(SHARED)/weights
# Another archive than the committed results' must change a param, or DVC would keep the old data.
MINI_SHA256 := 4bac28d1ae6aa9b6eadca7976bab8a3886fb0fe1c71a856f720c0c03105ea226
MINI    := WOOF_FETCH_URL=$(SHARED)/data/imagewoof2-mini.tgz \
           WOOF_WEIGHTS=$(SHARED)/weights

.PHONY: all repro offline mini test bench programme paper ci-small gpu-prepare gpu-check clean-venv
all: repro

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

repro: $(VENV)/.runtime          ## the whole pipeline, downloading ImageWoof and the weights
	dvc repro

offline: $(VENV)/.runtime        ## the whole pipeline from the local mirrors in $(SHARED)
	$(MIRROR) dvc repro

mini: $(VENV)/.runtime           ## a 2-minute run on the 300-image mini set, for a quick look
	$(MINI) dvc exp run -S fetch.sha256=$(MINI_SHA256) -S full.epochs=1 -S lora.epochs=1

test: $(VENV)/.dev
	$(PY) -m ruff check woof stages tests validate_project1.py
	$(PY) -m pytest -q tests

bench: $(VENV)/.dev              ## speed and memory table (python -m woof.bench --help)
	$(PY) -m woof.bench all

# The experiment programme (README "The programme"): one run at a time on the prepared data, every
# result kept in metrics/experiments.csv; `dvc repro compare paper` then turns the record into the
# answer. THREADS=1 leaves a core to tests; BLOCKS picks blocks (python -m woof.programme list).
SEEDS   ?= 0 1 2
# `dvc repro preprocess` first: on a fresh machine it prepares the data (a minute) and nothing else.
programme: $(VENV)/.runtime      ## every run of the programme the record lacks, then the answer
	$(MIRROR) dvc repro preprocess
	$(MIRROR) $(PY) -m woof.programme run $(if $(THREADS),--threads $(THREADS)) $(BLOCKS) --seeds $(SEEDS)
	dvc repro compare paper

paper: $(VENV)/.runtime          ## report.pdf from the committed results: no training, no DVC cache
	dvc repro --single-item compare paper

# The small configuration pull requests are checked on (.github/workflows/pr-report.yml):
# 5% of the 160 px training images, 64 px, one epoch each.
SMALL := -S fetch.url=https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz \
         -S data.train_fraction=0.05 -S data.image_size=64 -S full.epochs=1 -S lora.epochs=1
ci-small: $(VENV)/.runtime
	dvc exp run $(SMALL)

gpu-prepare:                     ## .gpu/: what scripts/gpu_check.sh needs on a GPU machine (git-ignored)
	mkdir -p .gpu
	cp $(SHARED)/data/imagewoof2-mini.tgz $(SHARED)/weights/vit_tiny_patch16_224.safetensors .gpu/

gpu-check: gpu-prepare           ## the prepared GPU check, on this machine's GPU (scripts/gpu_check.sh)
	PY=$(PY) bash scripts/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
