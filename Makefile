# Two commands from a clean clone: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= smollm2-135m-instruct
MODELS_DIR := models
IMAGE  ?= llm-fastapi-service
TORCH_VERSION := 2.13.0

.PHONY: install model run test lint format type-check bench build-docker run-docker clean

install: $(STAMP)

# torch is installed first and pinned: on this kind of machine `pip install torch==2.13.0`
# takes a local CPU wheel, while an unpinned torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

model: $(STAMP)
	$(BIN)/python -m app.llm.prepare $(MODEL) --models-dir $(MODELS_DIR)

run: $(STAMP)
	$(BIN)/python -m app.llm.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	$(BIN)/python -m app

test: $(STAMP)
	$(BIN)/python -m app.llm.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench

format: $(STAMP)
	$(BIN)/ruff format app tests bench
	$(BIN)/ruff check --fix app tests bench

type-check: $(STAMP)
	$(BIN)/mypy

# BENCH_ARGS: options of bench/run.py, e.g. BENCH_ARGS="--dtype bfloat16" or "--levels 1,4,16,32".
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m app.llm.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

build-docker:
	docker build -t $(IMAGE) .

run-docker:
	docker run --rm -p 8000:8000 -e SECURITY__API_KEYS -e SECURITY__ALLOW_UNAUTHENTICATED -v $(CURDIR)/models:/srv/models $(IMAGE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
