# The two commands a newcomer needs (see README.md):
#   make demo   set up .venv with the base install and run the release job on the bundled sample
#   make test   set up .venv with every extra ([dev]) and run the whole test suite (lint, types, tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HASH   := $(shell cat pyproject.toml | $(PYTHON) -c "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:12])")
# One stamp per install, named after pyproject.toml's digest: editing it reinstalls.
# [dev] contains every extra, so a dev install also satisfies the base stamp.
BASE_STAMP := $(VENV)/.installed-base-$(HASH)
DEV_STAMP  := $(VENV)/.installed-dev-$(HASH)

.PHONY: demo test system-deps bench clean

$(BASE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -f $(DEV_STAMP) || { $(BIN)/python -m pip install --quiet --upgrade pip && \
	  $(BIN)/python -m pip install --quiet -e .; }
	rm -f $(VENV)/.installed-base-*
	touch $@

$(DEV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-dev-* $(VENV)/.installed-base-*
	touch $@ $(BASE_STAMP)

# The demo needs only the base install (no report, forecasting, evaluation, GDAL or Spark
# extras): without [report] it writes the signed release and says that
# `pip install 'privmob[report]'` adds its heatmaps and HTML report.
demo: $(BASE_STAMP)
	$(BIN)/privmob demo --out out/demo

# System packages the tests use, from Debian: Chromium and the Noto CJK fonts for the browser
# test of the offline HTML report (Playwright drives Debian's Chromium, never downloads a
# browser), and a Java 17 runtime for the Spark backend's tests (PySpark local mode and the
# standalone cluster). Installed when missing and possible (root or passwordless sudo);
# otherwise those tests skip and say why.
system-deps:
	@missing=""; test -x /usr/bin/chromium || missing="chromium fonts-noto-cjk"; \
	  { [ -n "$$JAVA_HOME" ] || command -v java >/dev/null; } || missing="$$missing openjdk-17-jre-headless"; \
	  if [ -n "$$missing" ]; then SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	    { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	      $$missing >/dev/null; } || echo "note: could not install$$missing; the tests that need them will be skipped"; fi

test: $(DEV_STAMP) system-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache .hypothesis
