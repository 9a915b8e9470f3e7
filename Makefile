# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
CONFIG ?= configs/local.yaml

.PHONY: install run test test-unit test-pipeline clean

install: $(STAMP)

# Re-runs only when the pins, the install script or setup.py change.
$(STAMP): requirements/lock.txt requirements/no-deps.txt setup.py scripts/install.sh
	bash scripts/install.sh
	touch $@

# Generates the sample if missing, runs the local TFX pipeline, then captions
# one sample image with the pushed model.
run: install
	$(VENV)/bin/captioner run --config $(CONFIG)

# Every test: tests/unit (no pipeline run) and tests/pipeline (LocalDagRunner).
test: install
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=20

test-unit: install
	$(PY) -m pytest tests/unit -q -p no:cacheprovider --durations=10

test-pipeline: install
	$(PY) -m pytest tests/pipeline -q -p no:cacheprovider --durations=10

clean:
	rm -rf build
