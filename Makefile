# `make test` and `make bench` do every step from a fresh machine:
# a virtual environment, pinned dependencies, the build, then the run.
PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
DEPS := $(VENV)/.deps-installed

.PHONY: all build test test-cpu-build bench lint format clean

all: build

$(DEPS): requirements.txt
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# CUDA kernels when nvcc and a CUDA torch are present; FASTREG_CUDA=0|1 forces.
build: $(DEPS)
	MAX_JOBS=$(JOBS) $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest tests

# The CPU-only build (what a machine without nvcc gets) must build and pass too:
# built in a scratch copy so it leaves the main build alone.
test-cpu-build: $(DEPS)
	rm -rf build/cpu-only && mkdir -p build/cpu-only
	cp -r setup.py pyproject.toml csrc fastreg tests docs build/cpu-only/
	mkdir build/cpu-only/bench && cp bench/*.py build/cpu-only/bench/  # tests/test_bench.py runs bench/run.py
	rm -f build/cpu-only/fastreg/*.so
	cd build/cpu-only && FASTREG_CUDA=0 MAX_JOBS=$(JOBS) ../../$(PY) setup.py -q build_ext --inplace
	cd build/cpu-only && PYTHONPATH=. ../../$(PY) -c "import fastreg; assert not fastreg.build_info()['with_cuda']"
	cd build/cpu-only && PYTHONPATH=. ../../$(PY) -m pytest -q tests

bench: build
	$(PY) bench/run.py

lint: $(DEPS)
	$(PY) -m ruff check fastreg tests bench setup.py
	$(PY) -m ruff format --check fastreg tests bench setup.py

format: $(DEPS)
	$(PY) -m ruff format fastreg tests bench setup.py
	$(PY) -m ruff check --fix fastreg tests bench setup.py

clean:
	rm -rf build *.egg-info fastreg/*.so csrc/build_info.h
