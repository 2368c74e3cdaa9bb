# syntax=docker/dockerfile:1
# FedPM serving image: the prediction API (FastAPI + onnxruntime) with several uvicorn workers
# (FEDPM_SERVE_WORKERS; /metrics sums them, serving/metrics.py). No torch, no flwr: the image
# holds only serving/ and models/ (tests/serving checks the API imports no other role).
#
#   docker build -f docker/serving.Dockerfile -t fedpm-serving .      (from the repository root)
#
# Base: python 3.11.14 on Debian 12, pinned by tag and by the digest of its multi-arch index.

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# --- builder: dependencies first (cached until the pins change), then the source ------------
FROM base AS builder
RUN python -m venv /opt/venv
COPY requirements/constraints.txt docker/requirements/serving.txt /tmp/req/
RUN pip install --no-cache-dir -c /tmp/req/constraints.txt -r /tmp/req/serving.txt
COPY pyproject.toml README.md /src/
COPY models /src/models
COPY serving /src/serving
RUN pip install --no-cache-dir --no-deps /src \
    && python -c "import serving.app, serving.__main__"

# --- runtime: the venv and a non-root user -----------------------------------------------------
FROM base AS runtime
RUN groupadd --system --gid 10001 fedpm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fedpm --shell /usr/sbin/nologin fedpm \
    && mkdir -p /var/lib/fedpm/registry /var/lib/fedpm/serving \
    && chown -R 10001:10001 /var/lib/fedpm
COPY --from=builder /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/fedpm-entrypoint
ENV FEDPM_SERVE_HOST=0.0.0.0 \
    FEDPM_SERVE_PORT=8000 \
    FEDPM_SERVE_WORKERS=2 \
    FEDPM_SERVE_LOG_JSON=true \
    FEDPM_SERVE_REGISTRY_DIR=/var/lib/fedpm/registry \
    FEDPM_SERVE_STATE_PATH=/var/lib/fedpm/serving/state.sqlite \
    PROMETHEUS_MULTIPROC_DIR=/tmp/fedpm-serving-metrics
USER 10001:10001
WORKDIR /var/lib/fedpm
EXPOSE 8000
# liveness (/health); load balancers use /ready, which is 503 until a model is loaded
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['FEDPM_SERVE_PORT'], timeout=4)"]
ENTRYPOINT ["fedpm-entrypoint"]
CMD ["python", "-m", "serving"]
