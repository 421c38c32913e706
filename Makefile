# `make test` and `make bench` do every step from a fresh machine:
# a virtual environment, pinned dependencies, the build, then the run.
PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
DEPS := $(VENV)/.deps-installed

.PHONY: all build test test-cpu-build bench lint format docs sdist clean

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

# The source distribution (dist/fastreg-<version>.tar.gz).
sdist: $(DEPS)
	$(PY) -m build --sdist --no-isolation --outdir dist .

# The CPU-only build (what a machine without nvcc gets) must build and pass too: built
# from the source distribution, unpacked in a scratch folder, so the sdist is checked too.
test-cpu-build: sdist
	rm -rf build/cpu-only && mkdir -p build/cpu-only
	tar xzf dist/fastreg-$$($(PY) -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])").tar.gz \
		-C build/cpu-only --strip-components=1
	cd build/cpu-only && FASTREG_CUDA=0 MAX_JOBS=$(JOBS) ../../$(PY) setup.py -q build_ext --inplace
	cd build/cpu-only && PYTHONPATH=. ../../$(PY) -c "import fastreg; assert not fastreg.build_info()['with_cuda']"
	cd build/cpu-only && PYTHONPATH=. ../../$(PY) -m pytest -q tests

bench: build
	$(PY) bench/run.py
	$(PY) bench/train_step.py

# The HTML API reference and docs/ pages (warnings are errors): build/docs/index.html
docs: build
	$(PY) -m sphinx -W --keep-going -q -b html docs build/docs

CSRC_FILES = $(filter-out csrc/build_info.h,$(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.h csrc/cuda/*.cuh csrc/cuda/*.cu csrc/cuda/*.cpp))
PY_DIRS = fastreg tests bench tools examples setup.py

# ruff and clang-format (.clang-format) report what `make format` would change; functions
# over 60 lines without a reason beside them are listed (tools/function_length.py).
lint: $(DEPS)
	$(PY) -m ruff check $(PY_DIRS)
	$(PY) -m ruff format --check $(PY_DIRS)
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC_FILES)
	$(PY) tools/function_length.py

format: $(DEPS)
	$(PY) -m ruff format $(PY_DIRS)
	$(PY) -m ruff check --fix $(PY_DIRS)
	$(VENV)/bin/clang-format -i $(CSRC_FILES)

clean:
	rm -rf build dist *.egg-info fastreg/*.so csrc/build_info.h
