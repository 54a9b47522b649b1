# make install  create .venv with the project and all extras (torch CPU, dev tools)
# make run      the main pipeline on the embedded generated dataset
# make test     the test suite but its `extended` checks (real-data tests read $RECSYS_DATA_DIR), and the petastorm lane
# make bench    ingest + split benchmark (docs/performance.md figures)
# make wheel    build/dist/recsys_spark-<version>-py3-none-any.whl (for %pip install on Databricks, or a cluster image)
# make verify-results [VERIFY="rating/ml-100k/baselines ..."]  rerun the commands behind docs/results.md, compare
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RECSYS_DATA_DIR ?= $(abspath ../shared/datasets)
export RECSYS_DATA_DIR

PVENV := .venv-petastorm

.PHONY: install install-petastorm blas chromium run test test-main test-main-a test-main-b test-petastorm test-extended test-fast lint bench wheel verify-results clean

install: $(VENV)/.installed

# the stamp depends on the files that define the environment
$(VENV)/.installed: pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory blas
	@$(MAKE) --no-print-directory chromium
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[deep,dev]"
	touch $@

# the dashboard test opens the report in headless Chromium (Debian's package).  Best effort,
# like blas: without root or apt the test skips locally and fails under CI=true.
chromium:
	@if command -v chromium >/dev/null; then echo "chromium present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	   && echo "installed chromium") || echo "could not install chromium; the dashboard test needs it"; \
	else echo "no chromium and no root: the dashboard test skips (fails under CI=true)"; fi

# MLlib's ALS uses a native BLAS (libblas.so.3) when it finds one; Debian's
# OpenBLAS provides it.  Best effort: skipped without root or apt.
blas:
	@if ldconfig -p 2>/dev/null | grep -q 'libblas.so.3'; then echo "native BLAS present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null \
	   && echo "installed OpenBLAS") || echo "could not install OpenBLAS; MLlib falls back to Java BLAS"; \
	else echo "no native BLAS and no root: MLlib falls back to Java BLAS"; fi

# every family on the embedded data; the slowest models with the lighter settings of conf/quick/,
# and one fit per model (test predicted from the fit on train): docs/results.md has both figures
run: install
	$(BIN)/recsys-spark pipeline --config conf/local.toml --set 'models.models_dir="conf/quick"' --set models.refit_for_test=false

# Three pytest processes side by side (each its own Spark session): the main
# suite in two shards - notebooks, the blend and final stages, end-to-end
# jobs, costs, the suite report and the benchmark protocols, and the rest - and the petastorm lane
# (mostly its install).  Spark on tiny test data is latency bound, so two
# shards use the 2 cores better than one.  Output is grouped per shard.
MAIN_A := tests/unit/test_notebooks.py tests/unit/test_blend.py tests/unit/test_itemitem.py tests/integration/test_spark_submit.py tests/integration/test_realdata.py tests/unit/test_costs.py tests/unit/test_suite.py tests/unit/test_benchmark.py
test:
	$(MAKE) --no-print-directory -j3 --output-sync=target test-main-a test-main-b test-petastorm

test-main: test-main-a test-main-b

test-main-a: install
	mkdir -p build && $(BIN)/python -m pytest -q -m "not petastorm and not extended" -p no:cacheprovider --durations=15 --basetemp=build/pytest-a $(MAIN_A)

test-main-b: install
	mkdir -p build && $(BIN)/python -m pytest -q -m "not petastorm and not extended" -p no:cacheprovider --durations=15 --basetemp=build/pytest-b tests $(addprefix --ignore=,$(MAIN_A))

# petastorm needs pyarrow < 15, numpy < 2 and pyspark 4.0: its own environment,
# the project installed into it without dependencies, only the tests marked for it
install-petastorm: $(PVENV)/.installed

$(PVENV)/.installed: pyproject.toml constraints-petastorm.txt
	test -x $(PVENV)/bin/python || $(PY) -m venv $(PVENV)
	$(PVENV)/bin/pip install -q --upgrade pip
	$(PVENV)/bin/pip install -q -c constraints-petastorm.txt petastorm pyspark pyarrow numpy pandas torch pytest scipy
	$(PVENV)/bin/pip install -q --no-deps -e .
	touch $@

test-petastorm: install-petastorm
	mkdir -p build && RECSYS_PETASTORM_LANE=1 $(PVENV)/bin/python -m pytest -q -m petastorm -p no:cacheprovider --basetemp=build/pytest-petastorm tests/petastorm

# slow checks of internal properties (marked extended) that make test leaves out for time
test-extended: install
	$(BIN)/python -m pytest -q -m extended -p no:cacheprovider tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration and not petastorm"

lint: install
	$(BIN)/ruff check recsys_spark jobs tests benchmarks notebooks

bench: install
	$(BIN)/python benchmarks/ingest_split.py --out benchmarks/results/performance/ingest-split.json

# not part of CI: the benchmark commands take about an hour on 2 cores
verify-results: install
	$(BIN)/python benchmarks/verify_results.py $(VERIFY)

# the library with its package data (tuned defaults, search spaces); no dependencies bundled
wheel: install
	rm -rf build/dist && $(BIN)/pip wheel -q --no-deps --no-build-isolation -w build/dist .

clean:
	rm -rf output build .pytest_cache spark-warehouse
