# The serving image: the service and ONNX Runtime only (no torch, no training code).
# Default: onnxruntime-gpu on a CUDA 13 + cuDNN 9 runtime base (match it to ONNX Runtime's CUDA
# requirements table when bumping either; this pairing has not been run here). The service falls
# back to the CPU when no GPU is visible. The CPU-only image:
#   docker build --build-arg BASE=ubuntu:24.04 --build-arg ORT=cpu -t ple-ranker:cpu .
# ORT takes extras: ORT=cpu,feast adds Feast for RANKER_FEATURE_STORE=feast (docs/feature-stores.md).
# Two stages: the wheel is built and installed into a venv in `build`; the runtime stage gets the
# venv only (no pip cache, no build files), on the same base so the venv's Python path matches.
# Not built on our development machines (no Docker engine there): tests/test_deploy.py checks it.
ARG BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS build
ARG ORT=gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY service ./service
# [gpu] installs onnxruntime-gpu, [cpu] onnxruntime: never both in one environment. Not editable:
# the venv holds a copy of the service, so /src is left behind with this stage.
RUN pip install ".[${ORT}]"

FROM ${BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ranker \
 && useradd --system --uid 10001 --gid 10001 --no-create-home ranker
COPY --from=build /opt/venv /opt/venv
# uid and gid 10001: Kubernetes pods name them (deploy/k8s: runAsUser, runAsGroup, fsGroup).
USER ranker
WORKDIR /app
# Models and feature tables are mounted (docker-compose.yml), or baked in by a derived image:
#   FROM ple-ranker:latest
#   COPY models /models
ENV RANKER_HOST=0.0.0.0 RANKER_PORT=8000 RANKER_MODELS_DIR=/models RANKER_FEATURES_DIR=/data/features
EXPOSE 8000
# Ready = a model is loaded, checked and warmed up. Python's urllib, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health/ready', timeout=2)"]
# One uvicorn worker per container (docs/monitoring.md): scale with replicas.
CMD ["ranker-serve"]
