# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-unit bench soak clean deploy-test validate-deploy

# torch==2.13.0 goes in first: it is the CPU build, and pinning it keeps pip from pulling a
# multi-GB CUDA build when the package's own `torch>=` range is resolved.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[demo,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/stream-detector demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/stream-detector bench

# Minutes, not part of `make test`: the detector's RSS slope under key churn and random batch
# sizes (benchmarks/README.md, Soak). More with SOAK_ARGS, e.g. SOAK_ARGS="--minutes 12".
soak: $(STAMP)
	$(BIN)/python -m stream_detector.benchmarking.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

# Slow (minutes; builds images): the documented end-to-end deploy test, not part of `make test`.
deploy-test: $(STAMP)
	bash scripts/deploy-test.sh

# The static deployment checks alone (they also run inside `make test`).
validate-deploy: $(STAMP)
	bash scripts/validate-deploy.sh
