# syntax=docker/dockerfile:1
# FedPM edge image: the edge agent (MQTT ingest, store, ONNX inference, health topics, metrics)
# and the site's Flower SuperNode, which the agent itself starts and supervises when `superlink`
# is set (edge_agent/supernode.py: restarts with backoff, SIGTERM forwarded, restarts counted
# in fedpm_edge_supernode_restarts_total). One process tree per container, so no entrypoint
# juggles two daemons and the SuperNode's node config (store path, site id) cannot drift from
# the agent's. The same image runs the sensor simulator (`fedpm sensors`).
#
#   docker build -f docker/edge.Dockerfile -t fedpm-edge:amd64 .                  (x86-64 node)
#   docker buildx build --platform linux/arm64 --build-arg EDGE_PLATFORM=jetson \
#       -f docker/edge.Dockerfile -t fedpm-edge:jetson .                           (Jetson Orin)
#
# EDGE_PLATFORM=amd64: python 3.11.14 on Debian 12, pinned by tag and multi-arch index digest.
# EDGE_PLATFORM=jetson: NVIDIA L4T JetPack 6.1 (L4T r36.4.0: Ubuntu 22.04, CUDA 12.6, cuDNN 9,
#   TensorRT 10.3). No digest of this tag was found in the sources available when this was
#   written: pin it with `docker buildx imagetools inspect nvcr.io/nvidia/l4t-jetpack:r36.4.0`
#   before a fleet rollout. Python 3.11 comes from Ubuntu 22.04 (jammy) itself.
#   onnxruntime-gpu is not on PyPI for aarch64 + CUDA: it comes from NVIDIA's Jetson AI Lab
#   index, one per JetPack (see docker/README.md, "Jetson"):
#     JetPack 6.0   (L4T r36.3, CUDA 12.2, cuDNN 8)  https://pypi.jetson-ai-lab.io/jp6/cu122
#     JetPack 6.1/6.2 (L4T r36.4, CUDA 12.6, cuDNN 9) https://pypi.jetson-ai-lab.io/jp6/cu126
#   FedPM needs a cp311 build of it (pass ORT_GPU_INDEX and ORT_GPU_VERSION for yours); the
#   build stops if the installed onnxruntime has no CUDA execution provider.
# On both, training (the ClientApp) uses torch's CPU wheel: the model has 34.5 k parameters and
# a round's local epochs take seconds on a CPU; onnxruntime-gpu serves inference on the Jetson.

ARG EDGE_PLATFORM=amd64

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS base-amd64
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0 AS base-jetson
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# jammy's python3.11 (universe); the L4T tag fixes the Ubuntu release, so no version pin here
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006
FROM base-${EDGE_PLATFORM} AS base

# --- builder: torch, then the other dependencies (cached until the pins change), then source --
FROM base AS builder
ARG EDGE_PLATFORM
# must equal torch's pin in requirements/constraints.txt (tests/deploy/test_docker.py checks)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG ORT_GPU_INDEX=https://pypi.jetson-ai-lab.io/jp6/cu126
ARG ORT_GPU_VERSION=1.23.0
RUN python3.11 -m venv /opt/venv
COPY requirements/constraints.txt docker/requirements/edge.txt /tmp/req/
RUN pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}+cpu"
SHELL ["/bin/sh", "-eu", "-c"]
RUN if [ "${EDGE_PLATFORM}" = jetson ]; then \
        grep -vx onnxruntime /tmp/req/edge.txt > /tmp/req/deps.txt; \
        pip install --no-cache-dir -c /tmp/req/constraints.txt \
            --index-url "${ORT_GPU_INDEX}" --extra-index-url https://pypi.org/simple \
            "onnxruntime-gpu==${ORT_GPU_VERSION}"; \
        python -c "import onnxruntime as o, sys; p = o.get_available_providers(); print(p); sys.exit('CUDAExecutionProvider' not in p)"; \
    else \
        cp /tmp/req/edge.txt /tmp/req/deps.txt; \
    fi \
    && pip install --no-cache-dir -c /tmp/req/constraints.txt -r /tmp/req/deps.txt
COPY pyproject.toml README.md /src/
COPY models /src/models
COPY edge_agent /src/edge_agent
COPY aggregator /src/aggregator
COPY fedpm /src/fedpm
RUN pip install --no-cache-dir --no-deps /src \
    && python -c "import edge_agent.agent, edge_agent.client_app, fedpm.sensors"

# --- runtime: the venv and a non-root user ------------------------------------------------------
FROM base AS runtime
RUN groupadd --system --gid 10001 fedpm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fedpm --shell /usr/sbin/nologin fedpm \
    && mkdir -p /var/lib/fedpm/store /var/lib/fedpm/registry /var/lib/fedpm/flwr \
    && chown -R 10001:10001 /var/lib/fedpm
COPY --from=builder /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/fedpm-entrypoint
# No FEDPM_EDGE_REGISTRY_DIR here: a factory node takes models from model_url (OTA), and
# the two are refused together; the pilot compose stack, which mounts a registry, sets it.
ENV FEDPM_EDGE_STORE_PATH=/var/lib/fedpm/store/store.sqlite \
    FEDPM_EDGE_METRICS_HOST=0.0.0.0 \
    FEDPM_EDGE_METRICS_PORT=9100 \
    FEDPM_EDGE_LOG_JSON=true \
    FLWR_HOME=/var/lib/fedpm/flwr
USER 10001:10001
WORKDIR /var/lib/fedpm
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['FEDPM_EDGE_METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["fedpm-entrypoint"]
CMD ["python", "-m", "edge_agent"]
