# Quick start: `make demo` (set-up + compile resnet50) and `make test` (set-up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fxtrt-installed

.PHONY: setup demo test bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,bench,zoo]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/fxtrt compile torchvision:resnet50 --input 1x3x224x224 --batch 1:8:32 --out demo_out

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --durations=5

bench-quick: setup
	$(BIN)/python -m benchmarks.fidelity --quick

clean:
	rm -rf demo_out .pytest_cache
