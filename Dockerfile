# syntax=docker/dockerfile:1
# Swapyard's image: `swapyard serve`, configured entirely through SWAPYARD_* variables.
#
#   docker build -t swapyard:cpu .                           # CPU build of torch (the default)
#   docker build -t swapyard:cuda --build-arg VARIANT=cuda .   # CUDA build; run with --gpus all
#
# Installed by scripts/install.sh, the very script CI's scripts/test.sh runs, so the image cannot drift
# from what is tested. deploy/docker-compose.yml runs it next to Prometheus and Grafana.

ARG VARIANT=cpu
ARG CPU_BASE=python:3.11-slim-bookworm
# Only the driver comes from the host: PyPI's CUDA wheels of torch carry their own CUDA libraries.
ARG CUDA_BASE=nvidia/cuda:12.8.1-base-ubuntu24.04

FROM ${CPU_BASE} AS base-cpu
# PyTorch's CPU index: PyPI's default torch wheel is the multi-GB CUDA build.
ENV SWAPYARD_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${CUDA_BASE} AS base-cuda
# Triton compiles its launcher with a C compiler and Python's headers at first use, hence gcc and -dev.
# hadolint ignore=DL3008  # the distribution's current packages: the base image's tag pins the release
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006  # a stage of this file, not an image
FROM base-${VARIANT} AS runtime
ARG VARIANT
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SWAPYARD_VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/install.sh
COPY kernels kernels
COPY adapters_core adapters_core
COPY server server
COPY trainer trainer
COPY demo demo
COPY swapyard swapyard
RUN bash scripts/install.sh --venv /opt/venv --torch "${VARIANT}" --extras ""

# A non-root user owns only the data volumes.
RUN useradd --create-home --uid 10001 swapyard \
    && mkdir -p /data/cache /data/adapters /data/uploads \
    && chown -R swapyard:swapyard /data
USER 10001:10001
# /data/cache: Hugging Face's cache (models and Hub adapters) and the demo's build; /data/adapters: the
# adapter root (serve it with SWAPYARD_ADAPTER_DIR=/data/adapters); /data/uploads: uploaded adapters.
VOLUME ["/data/cache", "/data/adapters", "/data/uploads"]
# hadolint ignore=DL3064  # "TOKEN" in TOKENIZERS_PARALLELISM: no secret here
ENV HF_HOME=/data/cache/huggingface \
    XDG_CACHE_HOME=/data/cache \
    TOKENIZERS_PARALLELISM=false \
    SWAPYARD_HOST=0.0.0.0 \
    SWAPYARD_PORT=8080
EXPOSE 8080

# /ready: model loaded, engine running, not draining. The start period covers a model download or the demo's
# first build (1-2 minutes on a small CPU).
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('SWAPYARD_PORT', '8080'), timeout=4)"]

# No arguments: every option comes from SWAPYARD_* (`swapyard serve --help` lists them all).
ENTRYPOINT ["swapyard", "serve"]
