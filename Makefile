# Two commands: `make run` (demo worker) and `make test` (the whole suite, ruff included).
# Both create .venv and install what they need on first use.

VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# bytewax 0.21 ships wheels for CPython 3.8-3.12 only: pick a supported interpreter.
PYTHON  ?= $(shell for p in python3.11 python3.12 python3.10 python3; do \
             command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not (3,10) <= sys.version_info[:2] <= (3,12))' 2>/dev/null \
             && { echo $$p; break; }; done)

.PHONY: install run test lint bench clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: spendwatch needs CPython 3.10, 3.11 or 3.12 (bytewax 0.21 has no wheels for other versions); set PYTHON=/path/to/python3.11"; \
	  exit 1; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

run: $(STAMP)
	@test -s demo-data/events.jsonl || $(BIN)/spendwatch demo --out demo-data/events.jsonl
	@rm -rf out/demo  # a fresh demo each time: its outbox would otherwise remember what was sent
	$(BIN)/spendwatch run --config config/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint chromium
	$(BIN)/python -m pytest -q

# The status page test renders the page in headless Chromium (Debian package `chromium`).
# Installed here when missing and apt-get is there (as root, or through sudo); without a
# browser afterwards the target fails, so that test is never silently skipped.
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser || command -v google-chrome)
export CHROMIUM

chromium:
	@if [ -z "$(CHROMIUM)" ] && ! command -v chromium >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    echo "installing chromium for the status page test"; \
	    $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
	      || { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium; } \
	      || true; \
	  fi; \
	  if ! command -v chromium >/dev/null 2>&1; then \
	    echo "error: the status page test needs Chromium and it could not be installed:"; \
	    echo "       apt-get install chromium, or run make test CHROMIUM=/path/to/chrome"; \
	    exit 1; \
	  fi; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) out demo-data .pytest_cache .ruff_cache .hypothesis
