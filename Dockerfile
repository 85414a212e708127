# syntax=docker/dockerfile:1
# Swapyard's image: `swapyard serve`, configured entirely through SWAPYARD_* variables.
#
#   docker build -t swapyard:cpu .                           # CPU build of torch (the default)
#   docker build -t swapyard:cuda --build-arg VARIANT=cuda .   # CUDA build; run with --gpus all
#
# Where the wheels come from (build arguments; the defaults are PyPI and PyTorch's CPU index):
#   --build-arg TORCH_INDEX_URL=URL   torch's index for the CPU variant (default PyTorch's CPU index; empty:
#                                     pip's own settings below, e.g. a local torch wheel found by find-links)
#   --build-arg PIP_FIND_LINKS=URL    pip's own variables, for every package and for this build only: a folder
#   --build-arg PIP_INDEX_URL=URL     of wheels served over HTTP, or a mirror of the index (build with
#   --build-arg PIP_EXTRA_INDEX_URL=  --network host to reach one on the host's loopback; deploy/smoke.sh does).
# Works with BuildKit and with the classic builder, which builds every stage: pass CUDA_BASE=<the CPU base>
# there so that a CPU build does not pull the CUDA base.
#
# Installed by scripts/install.sh, the very script CI's scripts/test.sh runs, so the image cannot drift
# from what is tested. deploy/docker-compose.yml runs it next to Prometheus and Grafana.

ARG VARIANT=cpu
ARG CPU_BASE=python:3.11-slim-bookworm
# Only the driver comes from the host: PyPI's CUDA wheels of torch carry their own CUDA libraries.
ARG CUDA_BASE=nvidia/cuda:12.8.1-base-ubuntu24.04

FROM ${CPU_BASE} AS base-cpu
# PyTorch's CPU index: PyPI's default torch wheel is the multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV SWAPYARD_TORCH_INDEX_URL=${TORCH_INDEX_URL}

FROM ${CUDA_BASE} AS base-cuda

# hadolint ignore=DL3006  # a stage of this file, not an image
FROM base-${VARIANT} AS runtime
ARG VARIANT
# The CUDA base has no Python, and Triton compiles its launcher with a C compiler and Python's headers at first
# use, hence gcc and -dev. Here rather than in base-cuda so that the classic builder, which builds every stage,
# adds nothing to a CPU build. The CPU image gets no compiler.
# hadolint ignore=DL3008  # the distribution's current packages: the base image's tag pins the release
RUN if [ "$VARIANT" = cuda ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SWAPYARD_VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Build-time only (see the header); a changed value rebuilds from here on.
ARG PIP_FIND_LINKS
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
# Torch, then the other dependencies, in layers of their own: a change to pyproject.toml reuses torch's, a
# change to Swapyard's code reuses both.
COPY scripts/install.sh scripts/install.sh
# torch/test and torch/bin hold torch's own C++ test programs (about 130 MB in the CPU wheel): removed in the
# layer that installs them, or they would still weigh in the image. torch_shm_manager is not a test: kept.
RUN bash scripts/install.sh --venv /opt/venv --torch "${VARIANT}" --only torch \
    && cd /opt/venv/lib/python3*/site-packages/torch \
    && rm -rf test \
    && if [ -d bin ]; then find bin -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +; fi
COPY pyproject.toml ./
RUN bash scripts/install.sh --venv /opt/venv --torch "${VARIANT}" --extras "" --only deps
COPY README.md ./
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
