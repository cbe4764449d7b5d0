# rayops: `make demo` runs the whole platform, `make test` runs lint and every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
# Every dependency is pinned in requirements.lock (`make lock` refreshes it), but torch:
# its build depends on the machine, so it is pinned here and comes from the CPU index
# (about 200 MB instead of a multi-GB CUDA build). GPU machines: see docs/cluster.md
# ("GPU machines"): TORCH_INDEX=https://pypi.org/simple and XGBOOST_SPEC=xgboost==3.2.0.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The xgboost model family: the CPU-only wheel (6 MB), the version the lock holds.
XGBOOST_SPEC ?= xgboost-cpu==3.2.0
LOCK := requirements.lock
# Where `make lock` finds torch's CPU build: this machine's wheel folder, else the CPU index.
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels/torch-*),/opt/wheels,$(TORCH_INDEX)/torch)

.PHONY: install lint lock test test-fast coverage demo docs docs-serve bench image clean

install: $(STAMP)

# pip takes torch (it also reads this machine's pip settings, which may hold the CPU wheel
# on disk); uv installs the rest at the locked versions and compiles it on both cores.
# One retry per index: on a machine with the wheels on disk and no internet, pip's default
# (five, with backoff, for torch and each of its dependencies) spent 80 s on the CPU index.
PURELIB := import sysconfig; print(sysconfig.get_paths()["purelib"])

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/python -m pip install -q --no-compile --retries 1 --extra-index-url "$(TORCH_INDEX)" "$(TORCH_SPEC)"
	$(BIN)/python -m compileall -q -j 0 -x '/py31[2-9]_' "$$($(BIN)/python -c '$(PURELIB)')/torch" > /dev/null
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -c $(LOCK) -e ".[dev]" "$(XGBOOST_SPEC)"
	touch $(STAMP)

# Resolves every extra for Python 3.11 on every platform; torch's CPU build stands in for
# torch so that no CUDA package is locked (torch itself is pinned above, not in the lock).
lock:
	test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q uv; }
	echo "$(TORCH_SPEC)+cpu" > $(VENV)/torch-override.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra xgboost --extra bench --universal \
		--python-version 3.11 --find-links "$(TORCH_WHEELS)" \
		--override $(VENV)/torch-override.txt --no-emit-package torch --upgrade -q -o $(LOCK)

lint: install
	$(BIN)/ruff check platform jobs tests docs
	$(BIN)/ruff format --check platform jobs tests docs
	$(BIN)/mypy

# Two processes (pytest-xdist), each with its own Ray cluster and services; whole modules
# go to one process, so module fixtures are made once. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

# One run: the integration modules longest first, the unit tests filling the end, and the
# unit tests' coverage of platform/ printed (tests/unit_coverage.py traces only them: the
# traced integration tests take about a third longer; `make coverage` traces everything).
test: install lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --unit-coverage

# Coverage of the whole suite (Ray's worker processes are not traced).
coverage: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --cov=rayops --cov-report=term:skip-covered

# The inner loop: unit and contract tests, no Ray cluster, no services (under 3 minutes).
test-fast: install lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile tests/unit -m "not integration and not gpu"

demo: install
	$(BIN)/rayops demo

# Container images for cluster nodes (needs Docker): rayops:<version>-cpu and -gpu.
IMAGE   ?= rayops
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

image:
	docker build --build-arg FLAVOR=cpu -t $(IMAGE):$(VERSION)-cpu .
	docker build --build-arg FLAVOR=gpu --build-arg TORCH_INDEX=https://pypi.org/simple \
		--build-arg XGBOOST_SPEC=xgboost==3.2.0 \
		-t $(IMAGE):$(VERSION)-gpu .

BENCHMARKS := $(wildcard tests/benchmarks/bench_*.py)

bench: install
	$(BIN)/uv pip install -q --python $(BIN)/python -c $(LOCK) -e ".[dev,bench]" "$(XGBOOST_SPEC)"
	# bench_forecast.py and bench_recommend.py read only these packages' data files: without their dependencies
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps "ISLP==0.6.0" "pmdarima==2.1.1" "recbole==1.2.1"
	@test -n "$(BENCHMARKS)" || echo "no benchmark scripts in tests/benchmarks/ yet"
	@for script in $(BENCHMARKS); do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf lake mlflow site .pytest_cache .ruff_cache .mypy_cache .coverage

# The docs site (MkDocs, Material theme) into site/; the reference pages are generated.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001
