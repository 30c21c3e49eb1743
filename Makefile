# Two commands for a newcomer:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.augsense-installed
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo paper-demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# the embedded default, then the paper's other analyses on it (quick sizes) and its report again
demo: $(STAMP)
	$(BIN)/augsense demo --out runs/demo --overwrite
	$(BIN)/augsense paper runs/demo

paper-demo: demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
