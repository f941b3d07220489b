# `make` builds the environment and runs the pipeline; `make test` runs the tests.
VENV   ?= .venv
PYTHON ?= python3
SHARED ?= $(abspath ../shared)
JOBS   ?= 1
BASE   ?= main
PY     := $(VENV)/bin/python
# DVC runs each stage's `python` from PATH: make it the project's environment.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# The local mirrors of the two remote inputs (see README "Offline"): locations, given as
# environment variables that DVC does not track, so the lock records the params, not the paths.
MIRROR  := WOOF_FETCH_URL=$(SHARED)/data/imagewoof2-160.tgz \
           WOOF_WEIGHTS=$(SHARED)/weights/vit_tiny_patch16_224.safetensors
# Another archive than the committed results' must change a param, or DVC would keep the old data.
MINI_SHA256 := 4bac28d1ae6aa9b6eadca7976bab8a3886fb0fe1c71a856f720c0c03105ea226
MINI    := WOOF_FETCH_URL=$(SHARED)/data/imagewoof2-mini.tgz \
           WOOF_WEIGHTS=$(SHARED)/weights/vit_tiny_patch16_224.safetensors

.PHONY: all repro offline mini test bench programme sweep sweep-full seeds summary dvc-sweep comparisons \
        sweep-collect ci-small pr-report gpu-prepare gpu-check clean-venv
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

# The experiment programme (README "Experiment programme"): one run at a time on the prepared
# data, every result kept in metrics/experiments.csv (use the SHARED mirror, or MIRROR= online).
# THREADS=1 leaves a core to tests; BLOCKS picks blocks (python -m woof.programme list).
SEEDS   ?= 0 1 2
# `dvc repro preprocess` first: on a fresh machine it prepares the data (a minute) and nothing else.
PROGRAMME = $(MIRROR) dvc repro preprocess && $(MIRROR) $(PY) -m woof.programme run $(if $(THREADS),--threads $(THREADS))
programme: $(VENV)/.runtime      ## every run of the programme the record lacks, then the summary
	$(PROGRAMME) $(BLOCKS) --seeds $(SEEDS)
	$(PY) -m woof.programme summary
sweep: $(VENV)/.runtime          ## LoRA rank x lr and full fine-tuning lr grids; val chooses, test reports
	$(PROGRAMME) lora-rank lora-lr full-lr
	$(PY) -m woof.programme summary
sweep-full: $(VENV)/.runtime     ## full fine-tuning's lr grid only
	$(PROGRAMME) full-lr
	$(PY) -m woof.programme summary
seeds: $(VENV)/.runtime          ## the val-best full and LoRA configurations at SEEDS="0 1 2"
	$(PROGRAMME) seeds --seeds $(SEEDS)
	$(PY) -m woof.programme summary
summary: $(VENV)/.runtime        ## the programme's tables and figures, from the record only
	$(PY) -m woof.programme summary

RANKS ?= 1 2 4 8 16 32
LRS   ?= 0.0003 0.001 0.003
# `queue --run` queues the experiments, starts $(JOBS) DVC queue workers and waits for them.
dvc-sweep: $(VENV)/.runtime      ## the same LoRA grid as DVC experiments, through the DVC queue
	$(PY) -m woof.sweep queue lora --ranks $(RANKS) --lrs $(LRS) --run -j $(JOBS)
	$(PY) -m woof.sweep collect

compare-%: $(VENV)/.runtime      ## compare-probe | compare-freeze | compare-scratch | compare-fraction | compare-backbone
	$(PY) -m woof.sweep queue $* --run -j $(JOBS)
	$(PY) -m woof.sweep collect

comparisons: $(VENV)/.runtime    ## every comparison and the LoRA grid
	$(PY) -m woof.sweep queue all --run -j $(JOBS)
	$(PY) -m woof.sweep collect

sweep-collect: $(VENV)/.runtime  ## tables and figures from `dvc exp show` only (re-runs nothing)
	$(PY) -m woof.sweep collect

# The small configuration pull requests are checked on (.github/workflows/pr-report.yml):
# 5% of the 160 px training images, 64 px, one epoch each.
SMALL := -S fetch.url=https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz \
         -S data.train_fraction=0.05 -S data.image_size=64 -S full.epochs=1 -S lora.epochs=1
ci-small: $(VENV)/.runtime
	dvc exp run $(SMALL)

pr-report: $(VENV)/.runtime      ## Markdown of metric/param diffs against BASE, for a pull request
	$(PY) -m woof.pr_report --base $(BASE) --out pr-report.md

gpu-prepare:                     ## .gpu/: what scripts/gpu_check.sh needs on a GPU machine (git-ignored)
	mkdir -p .gpu
	cp $(SHARED)/data/imagewoof2-mini.tgz $(SHARED)/weights/vit_tiny_patch16_224.safetensors .gpu/

gpu-check: gpu-prepare           ## the prepared GPU check, on this machine's GPU (scripts/gpu_check.sh)
	PY=$(PY) bash scripts/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
