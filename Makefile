# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# D2V_DATA is the data root (default ./data). The tests fall back to the offline mirror ../shared/data.
TEST_DATA := $(or $(D2V_DATA),$(if $(wildcard ../shared/data),$(abspath ../shared/data),$(CURDIR)/data))
NBVAL := CI=1 TQDM_DISABLE=1 D2V_PROFILE=tiny D2V_DATA=$(TEST_DATA) $(PY) -m pytest -q -p no:cacheprovider \
	--nbval-lax --nbval-current-env --nbval-cell-timeout=900
export TQDM_MININTERVAL ?= 5
# idle OpenMP threads sleep instead of spinning (spinning starves the other process on a shared 2-core box)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test test-lib test-notebooks notebooks lab presets repoint clean gpu-check

$(VENV)/.installed: requirements-lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-lock.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m d2v_mini demo

presets: setup
	$(PY) -m d2v_mini presets

test: setup
	D2V_DATA=$(TEST_DATA) $(PY) -m pytest -q tests
	$(NBVAL) notebooks

test-lib: setup
	D2V_DATA=$(TEST_DATA) $(PY) -m pytest -q tests

test-notebooks: setup
	$(NBVAL) notebooks

# Re-execute the notebooks in the tiny profile and store their outputs (what GitHub shows).
notebooks: setup
	TQDM_DISABLE=1 D2V_PROFILE=tiny D2V_DATA=$(TEST_DATA) $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.timeout=900 notebooks/[0-9]*.ipynb
	$(PY) -m nbstripout --keep-output --keep-count notebooks/[0-9]*.ipynb

# On a CUDA machine: the notebooks in the small profile (time-capped), a few base-preset steps per modality in
# bf16 and the throughput with model FLOP utilisation -> runs/gpu_check.json (benchmarks/gpu_check.py;
# `--dry-run` prints the plan without a GPU).
gpu-check: setup
	$(PY) benchmarks/gpu_check.py --out runs/gpu_check.json

# Jupyter refuses to run as root (a common Docker setup) unless told to.
lab: setup
	$(PY) -m jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

# A fork: `make repoint REPO=https://github.com/you/d2v_mini` writes REPO into pyproject.toml ([project.urls])
# and regenerates the notebooks' Colab install line and every Colab badge from it (d2v_mini/links.py: standard
# library only, so any python3 runs it).
repoint:
	@test -n "$(REPO)" || { echo "usage: make repoint REPO=https://github.com/OWNER/NAME"; exit 2; }
	$(PYTHON) d2v_mini/links.py --repoint "$(REPO)"

clean:
	rm -rf $(VENV) runs .pytest_cache
