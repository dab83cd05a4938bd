# codex-bridge — `make run` and `make test` do all set-up on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: install run demo test test-tools lint typecheck unit bench adversarial record clean \
	e2e-openwebui openwebui

install: $(PY_STAMP) $(NODE_STAMP)

# The Python package and its dev tools, in .venv at the repository root.
$(PY_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# @openai/codex 0.169.0, pinned by package-lock.json; the pool runs the
# native binary from its platform package.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(BIN)/codex-bridge serve

# The service with the project's scripted model backend: no account needed.
demo: install
	$(BIN)/python -m fixtures.demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Real servers the tests use: Redis (the conversation store) and Chromium
# (the status page), from Debian's packages when they are missing.
TEST_TOOLS := redis-server chromium

test-tools:
	@missing=""; for tool in $(TEST_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi

test: lint typecheck test-tools
	$(BIN)/pytest

# The bridge's throughput, latency, first byte and memory beside built-in
# references, every door, and the real binary (4-6 minutes; README "Benchmarks").
bench: install
	$(BIN)/python -m bench.run

# The real service and real codex children under faults (15-20 minutes).
adversarial: install
	$(BIN)/python -m bench.adversarial

# A real OpenWebUI 0.12.4 in front of the service, in a venv of its own
# (about 3 GB: the CPU build of PyTorch first, which pip takes from the
# machine's wheel directory, so that OpenWebUI does not pull the CUDA one).
OWUI_VENV  := .venv-openwebui
OWUI_STAMP := $(OWUI_VENV)/.installed

openwebui: $(OWUI_STAMP)

$(OWUI_STAMP):
	$(PYTHON) -m venv $(OWUI_VENV)
	$(OWUI_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OWUI_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(OWUI_VENV)/bin/python -m pip install --quiet open-webui==0.12.4
	touch $@

# OpenWebUI's web-UI path (socket.io session, its built-in tools) against the
# service with real codex children and the scripted model; not part of `make test`.
e2e-openwebui: install test-tools $(OWUI_STAMP)
	$(BIN)/pytest tests/e2e_openwebui

# Re-record fixtures/transcripts from the real binary.
record: install
	$(BIN)/python -m fixtures.record

clean:
	rm -rf $(VENV) $(OWUI_VENV) node_modules .mypy_cache .ruff_cache .pytest_cache *.egg-info
