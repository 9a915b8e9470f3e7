# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
CONFIG ?= configs/local.yaml

.PHONY: install run test clean

install: $(STAMP)

# Re-runs only when the pins, the install script or setup.py change.
$(STAMP): requirements/lock.txt requirements/no-deps.txt setup.py scripts/install.sh
	bash scripts/install.sh
	touch $@

# Generates the sample if missing, runs the local TFX pipeline, then captions
# one sample image with the pushed model.
run: install
	$(VENV)/bin/captioner run --config $(CONFIG)

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=20

clean:
	rm -rf build
