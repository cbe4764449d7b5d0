# rayops: `make demo` runs the whole platform, `make test` runs lint and every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
# The exact pin takes the CPU wheel; a looser spec pulls a multi-GB CUDA build.
# GPU users: see README ("GPU machines") and set TORCH_SPEC to the CUDA build they need.
TORCH_SPEC ?= torch==2.13.0
# The xgboost model family. xgboost-cpu is 6 MB; GPU users set XGBOOST_SPEC=xgboost (CUDA,
# with NCCL: about 500 MB).
XGBOOST_SPEC ?= xgboost-cpu==3.2.0

.PHONY: install lint test test-fast demo bench image clean

install: $(STAMP)

# pip takes torch (it reads this machine's pip settings, which point at the CPU wheel on
# disk); uv installs the rest and compiles it on both cores: about 60 s instead of pip's 160.
PURELIB := import sysconfig; print(sysconfig.get_paths()["purelib"])

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/python -m pip install -q --no-compile "$(TORCH_SPEC)"
	$(BIN)/python -m compileall -q -j 0 -x '/py31[2-9]_' "$$($(BIN)/python -c '$(PURELIB)')/torch" > /dev/null
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -e ".[dev]" "$(XGBOOST_SPEC)"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check platform jobs tests

# Two processes (pytest-xdist), each with its own Ray cluster and services; whole modules
# go to one process, so module fixtures are made once. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

test: install lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

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
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[dev,bench]" "$(XGBOOST_SPEC)"
	# bench_forecast.py and bench_recommend.py read only these packages' data files: without their dependencies
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps "ISLP==0.6.0" "pmdarima==2.1.1" "recbole==1.2.1"
	@test -n "$(BENCHMARKS)" || echo "no benchmark scripts in tests/benchmarks/ yet"
	@for script in $(BENCHMARKS); do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf lake mlflow .pytest_cache .ruff_cache
