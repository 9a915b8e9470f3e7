# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
CONFIG ?= configs/local.yaml
# pytest-xdist worker processes; a test file stays on one worker (its module
# fixtures run once). 2 = this project's CI machines' cores. Files are handed
# out in collection order, the slowest first (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install run test test-unit test-pipeline clean

install: $(STAMP)

# Re-runs only when the pins, the install script or setup.py change.
$(STAMP): requirements/installer.txt requirements/lock.txt requirements/no-deps.txt setup.py scripts/install.sh
	bash scripts/install.sh
	touch $@

# Generates the sample if missing, runs the local TFX pipeline, then captions
# one sample image with the pushed model.
run: install
	$(VENV)/bin/captioner run --config $(CONFIG)

# Every test: tests/unit (no pipeline run) and tests/pipeline (LocalDagRunner).
test: install
	$(PYTEST) tests --durations=20

test-unit: install
	$(PYTEST) tests/unit --durations=10

test-pipeline: install
	$(PYTEST) tests/pipeline --durations=10

clean:
	rm -rf build
