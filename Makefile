# The two commands a newcomer needs (see README.md):
#   make demo   set up .venv with privmob[report] and run the release job on the bundled sample
#   make test   set up .venv with every extra ([dev]) and run the whole test suite (lint, types, tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HASH   := $(shell cat pyproject.toml | $(PYTHON) -c "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:12])")
# One stamp per install, named after pyproject.toml's digest: editing it reinstalls.
# [dev] contains every extra, so a dev install also satisfies the demo stamp.
DEMO_STAMP := $(VENV)/.installed-demo-$(HASH)
DEV_STAMP  := $(VENV)/.installed-dev-$(HASH)

.PHONY: demo test system-deps bench clean

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -f $(DEV_STAMP) || { $(BIN)/python -m pip install --quiet --upgrade pip && \
	  $(BIN)/python -m pip install --quiet -e '.[report]'; }
	rm -f $(VENV)/.installed-demo-*
	touch $@

$(DEV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-dev-* $(VENV)/.installed-demo-*
	touch $@ $(DEMO_STAMP)

# The demo installs privmob with its reports ([report]: heatmaps and the HTML page), not the
# forecasting, evaluation, GDAL or Spark extras. A plain `pip install privmob` runs it too,
# writing the signed release without pictures and saying which extra draws them.
demo: $(DEMO_STAMP)
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
