# Quick start: `make demo` (set up + run the whole job) and `make test` (set up + run the tests).
# The environment lives in .venv/ and is built by uv from uv.lock; uv itself is bootstrapped
# into .tools/ with the system python3, so a fresh Debian machine needs nothing but Python 3.11.
PYTHON ?= python3
UV_VERSION ?= 0.13.8
UV := .tools/bin/uv
VENV_PY := .venv/bin/python
IMAGES ?=
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup demo test test-all browsers clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

setup: .venv/.synced

demo: setup
	$(VENV_PY) -m demo $(if $(IMAGES),--images "$(IMAGES)")

test: setup
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(VENV_PY) -m pytest

clean:
	rm -rf .venv .tools demo-output runs .pytest_cache
