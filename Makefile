# Every target creates or reuses .venv and installs what it needs; `make demo` and `make test` are
# all a fresh machine needs.
VENV ?= .venv
BIN := $(VENV)/bin
PYPROJECT_HASH := $(shell sha1sum pyproject.toml | cut -c1-10)
STAMP = $(VENV)/.installed-$(1)-$(PYPROJECT_HASH)

.PHONY: demo test test-fast docs bench bench-methods bench-imports lint clean

$(call STAMP,test):
	bash scripts/install.sh test
	touch $@

$(call STAMP,bench):
	bash scripts/install.sh test,bench
	touch $@

demo: $(call STAMP,test)
	$(BIN)/python -m headvec.demo

# `make test` runs everything (under 5 minutes on 2 cores); `make test-fast` skips the long end-to-end
# tests marked slow.
test: $(call STAMP,test)
	$(BIN)/python -m pytest tests

test-fast: $(call STAMP,test)
	$(BIN)/python -m pytest tests -m "not slow"

# The site (guide, API reference, results) into site/; offline, and --strict fails on any warning.
docs: $(call STAMP,test)
	$(BIN)/mkdocs build --strict

bench: $(call STAMP,bench)
	$(BIN)/python bench/run.py

# Only the SAV / MTV / reward-model sections, replaced in place in docs/benchmarks.md.
bench-methods: $(call STAMP,bench)
	$(BIN)/python bench/run.py --only methods

# Only the import and startup times, replaced in place in docs/benchmarks.md.
bench-imports: $(call STAMP,bench)
	$(BIN)/python bench/run.py --only imports

lint: $(call STAMP,test)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
