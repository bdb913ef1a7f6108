# The two commands of the README:  make demo  |  make test
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: demo test lint bench bench-dask clean

$(BIN)/retention: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/retention  ## build a sandbox on embedded SQLite, then plan, run and verify it
	$(BIN)/retention demo --dir retention-demo

lint: $(BIN)/retention
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(BIN)/retention lint  ## the whole suite; starts its own PostgreSQL server, renders the audit report in Chromium
	scripts/ensure-postgres
	scripts/ensure-chromium
	$(BIN)/python -m pytest

bench: $(BIN)/retention  ## 2,000,000 rows on a throwaway PostgreSQL: the tool against hand-written SQL
	scripts/ensure-postgres
	$(BIN)/python bench/bench_postgres.py

bench-dask: $(BIN)/retention  ## 200,000 S3 objects on SeaweedFS: serial, Dask with 1, 2, 4 workers, a hand-written parallel delete
	$(BIN)/python bench/bench_dask.py

clean:
	rm -rf $(VENV) retention-demo var .pytest_cache .ruff_cache .mypy_cache
