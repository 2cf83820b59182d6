# The README's two commands: `make demo` and `make test`. Both set themselves up from nothing.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
AP := $(VENV)/bin/accelpilot
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test unit lint typecheck stack-up stack-down clean browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --progress-bar off -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(AP) demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) browser
	$(PY) -m pytest -m "not service"

stack-up: $(STAMP)
	$(AP) stack up

stack-down: $(STAMP)
	$(AP) stack down

# The console's real-browser tests drive Debian's chromium (Playwright cannot download its own).
browser:
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# Everything CI runs: lint, type-check, then every test, the real Kafka + InfluxDB included.
# The stack is brought up first (visible progress: the first InfluxDB build takes a while)
# and stopped afterwards whatever the result.
test: $(STAMP) lint typecheck browser
	$(AP) stack up
	$(PY) -m pytest; status=$$?; $(AP) stack down; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache *.egg-info
