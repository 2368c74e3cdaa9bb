# syntax=docker/dockerfile:1
# FedPM aggregator image: the Flower ServerApp (aggregator.server_app) on a CUDA PyTorch base.
#
# Flower 1.42 runs a ServerApp as its own process: with `flower-superlink --isolation process`
# the SuperLink starts no executor itself, and this image's default command,
#   flower-superexec --runtime-api-address superlink:9093 ...
# connects to the SuperLink's Runtime API (the SuperLink's one HTTPS port), waits for runs and
# starts one `flwr-serverapp --token ...` per run (the executor `subprocess`), with the FAB that
# `flwr run` submitted. The same image runs `fedpm fl run` (an operator starting a run),
# `fedpm fl exporter` (round metrics for Prometheus) and `flwr supernode register`.
#
#   docker build -f docker/aggregator.Dockerfile -t fedpm-aggregator .   (from the repo root)
#
# Base: PyTorch 2.8.0 with CUDA 12.8 and cuDNN 9 (Python 3.11, conda), pinned by tag and
# digest. Its torch is kept (a venv with --system-site-packages sees it): constraints.txt pins the
# CPU wheel for tests, which must not replace the CUDA build here.

FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime@sha256:417bd75df6365104c283ea4c1651fb3530d9eb5a4c2fafa51943cff2a94e6385 AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# FedPM supports Python 3.11 only (pyproject.toml): fail the build if the base moved on
RUN python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version"

# --- builder: dependencies first (cached until the pins change), then the source ------------
FROM base AS builder
RUN python -m venv --system-site-packages /opt/venv
COPY requirements/constraints.txt docker/requirements/aggregator.txt /tmp/req/
RUN grep -v '^torch==' /tmp/req/constraints.txt > /tmp/req/constraints-gpu.txt \
    && pip install --no-cache-dir -c /tmp/req/constraints-gpu.txt -r /tmp/req/aggregator.txt
COPY pyproject.toml README.md /src/
COPY models /src/models
COPY aggregator /src/aggregator
COPY edge_agent /src/edge_agent
COPY fedpm /src/fedpm
RUN pip install --no-cache-dir --no-deps /src \
    && python -c "import torch, aggregator.server_app, fedpm.fl_exporter; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# --- runtime: the venv, the Flower app (for `flwr run`) and a non-root user ------------------
FROM base AS runtime
RUN groupadd --system --gid 10001 fedpm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fedpm --shell /usr/sbin/nologin fedpm \
    && mkdir -p /var/lib/fedpm/registry /var/lib/fedpm/checkpoints /var/lib/fedpm/fl-runs /var/lib/fedpm/flwr \
    && chown -R 10001:10001 /var/lib/fedpm
COPY --from=builder /opt/venv /opt/venv
# the Flower app folder that `fedpm fl run` / `flwr run` builds the FAB from
COPY --from=builder /src /opt/fedpm-app
COPY docker/entrypoint.sh /usr/local/bin/fedpm-entrypoint
ENV FLWR_HOME=/var/lib/fedpm/flwr
USER 10001:10001
WORKDIR /var/lib/fedpm
# the SuperExec's gRPC health server (no TLS; keep it on the internal network)
EXPOSE 9095
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys; from fedpm.fl_exporter import Probe; sys.exit(0 if Probe('superexec', '127.0.0.1:9095').serving() else 1)"]
ENTRYPOINT ["fedpm-entrypoint"]
CMD ["flower-superexec", "--runtime-api-address", "superlink:9093", \
     "--root-certificates", "/run/secrets/fedpm-ca.crt", \
     "--superexec-auth-secret-file", "/run/secrets/superexec-secret", \
     "--health-server-address", "0.0.0.0:9095"]
