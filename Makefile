# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Each first creates .venv, installs the packages and the Jupyter kernel, and builds the demo data.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the demo and the sweep train from scratch: no pretrained weights to download (a user's run starts from them)
DEMO_PARAMS ?= -p img_size 32 -p pretrained False
SWEEP_BACKBONES ?= resnet18,mobilenetv3_small_100
SWEEP_ARGS ?= $(DEMO_PARAMS)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo demo-multilabel sweep leaderboard test test-fast lab bench clean-outputs

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name imgkit --display-name "Python (imgkit)"
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m helpers.demo

demo: setup
	$(PY) -m helpers.runner --backbone resnet18 $(DEMO_PARAMS)
	$(PY) -m helpers.leaderboard

# the same series on the multi-label demo (data/digits_multilabel: 64 px images of 1-4 digits, labelled
# with the set of digits shown), as its own run
MULTILABEL_DATA := $(or $(KIT_DEMO_MULTILABEL),data/digits_multilabel)
MULTILABEL_PARAMS ?= -p img_size 32 -p pretrained False -p epochs 15 -p run_name resnet18_multilabel
demo-multilabel: setup
	$(PY) -m helpers.runner --backbone resnet18 -p data_dir $(MULTILABEL_DATA) -p label_col labels \
		-p task multilabel $(MULTILABEL_PARAMS)
	$(PY) -m helpers.leaderboard

# outputs/leaderboard.csv and .png from every run folder
leaderboard: setup
	$(PY) -m helpers.leaderboard

# one run per backbone (and per point of a --grid file), then outputs/leaderboard.csv and .png
sweep: setup
	$(PY) -m helpers.sweep --backbones $(SWEEP_BACKBONES) $(SWEEP_ARGS)

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

# the inner loop: everything but the notebook series, sweeps, torchrun and kill-and-resume (under a minute)
test-fast: setup
	$(PY) -m pytest -m "not slow"

# benchmarks/RESULTS.md: data path, accuracy, transfer, inference, scale, demo (a few minutes; BENCH_ARGS=--quick: ~1)
BENCH_ARGS ?=
bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# JupyterLab on notebooks/ with the kit's settings (jupyter-config/: no news prompt); it prints the URL
# with its token. As root (a container) it needs --allow-root.
lab: setup
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter-config$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH} \
		$(PY) -m jupyterlab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean-outputs:
	rm -rf outputs/runs outputs/datasets outputs/leaderboard.csv
