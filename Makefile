# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create the project-local .venv and install what they need: torch==2.13.0 (CPU build) first,
# then the package, then a check that pip did not swap torch for another build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
DEMO_DIR ?= out/demo

.PHONY: demo test lint bench clean image-env

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet $(TORCH) 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and torch.version.cuda is None else 'torch was replaced: ' + v)"
	$(PY) -c "import mrf_core, mrf_gadgetron, ismrmrd, gadgetron, sigpy, finufft, h5py"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mrf demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check .

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_epg.py
	$(PY) benchmarks/bench_matching.py
	$(PY) benchmarks/bench_simulate.py
	$(PY) benchmarks/bench_recon.py --blas-threads 1
	$(PY) benchmarks/bench_mapping.py
	$(PY) benchmarks/bench_replay.py
	$(PY) benchmarks/bench_qa.py

# Gadgetron's runtime image without Docker: a venv with the image's packages (numpy 1.26.4, scipy 1.13, ismrmrd
# 1.14, ...), the package installed as the Dockerfile does, and the Dockerfile's check run as a non-root user
# from / (docker/emulate.sh; README, "Docker"). TORCH_INDEX= (empty) when torch 2.13.0+cpu is in pip's find-links.
IMAGE_ENV ?= /tmp/mrf-image-env
image-env:
	sh docker/emulate.sh $(IMAGE_ENV)

clean:
	rm -rf $(VENV) out build *.egg-info
