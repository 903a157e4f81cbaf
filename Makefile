# Quick start: `make demo` (set up + run the whole job) and `make test` (set up + run the tests).
# The environment lives in .venv/ and is built by uv from uv.lock; uv itself is bootstrapped
# into .tools/ with the system python3, so a fresh Debian machine needs nothing but Python 3.11.
PYTHON ?= python3
UV_VERSION ?= 0.13.8
UV := .tools/bin/uv
VENV_PY := .venv/bin/python
IMAGES ?=
PYTEST_ARGS ?= -m "not slow"

CHROMIUM ?= /usr/bin/chromium
# apt-get needs root: use sudo when not root and it exists.
SUDO := $(shell [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null && echo sudo; })

.PHONY: setup demo test test-all browsers redis postgres clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# --compile-bytecode: .pyc files written once at install (as pip does), so that every
# `scrapy crawl` and trainer run starts without compiling its imports (0.3 s of each crawl's
# start-up, more where PYTHONDONTWRITEBYTECODE is set); costs ~16 s once.
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON) --compile-bytecode
	touch $@

setup: .venv/.synced

# Debian's Chromium for the scrapy-playwright tests (Playwright cannot fetch its own browser
# where only package registries are reachable).
browsers:
	@[ -x "$(CHROMIUM)" ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# Debian's Redis for the shared-frontier tests (tests/crawler/test_frontier.py start their own
# server on a free port; nothing listens on 6379 for them). Where it cannot be installed, those
# tests skip and say so.
redis:
	@command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; } || echo "warning: redis-server could not be installed: the shared-frontier tests will skip" >&2

# Debian's PostgreSQL for the shared-catalog tests (tests/postgres_server.py makes a throwaway
# cluster with initdb on a free port; no system cluster is started or used). Where it cannot be
# installed, those tests skip and say so.
POSTGRES_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
postgres:
	@[ -n "$(POSTGRES_INITDB)" ] || command -v initdb >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; } || echo "warning: postgresql could not be installed: the shared-catalog tests will skip" >&2

# The one-command job (python -m imageclf gallery <labels> ...) pointed at the local demo site;
# IMAGES=<folder of label subfolders> serves those photos instead of generated shapes.
demo: setup
	$(VENV_PY) -m demo $(if $(IMAGES),--images "$(IMAGES)")

test: setup browsers redis postgres
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

test-all: setup browsers redis postgres
	$(VENV_PY) -m pytest

clean:
	rm -rf .venv .tools demo-output runs .pytest_cache
