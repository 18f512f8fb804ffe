# The serving image: the service and ONNX Runtime only (no torch, no training dependencies).
# Default: CUDA build of onnxruntime on a CUDA 13 + cuDNN runtime base (falls back to CPU when
# no GPU is visible). CPU-only image:
#   docker build --build-arg BASE=ubuntu:24.04 --build-arg ORT=cpu -t ple-ranker:cpu .
ARG BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE}
ARG ORT=gpu
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
# [gpu] installs onnxruntime-gpu, [cpu] onnxruntime: never both in one environment.
RUN pip install ".[${ORT}]"
RUN useradd --system --uid 10001 --no-create-home ranker
USER ranker
ENV RANKER_HOST=0.0.0.0 RANKER_PORT=8000 RANKER_MODELS_DIR=/models RANKER_FEATURES_DIR=/data/features
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s CMD curl -fsS http://127.0.0.1:8000/health/ready || exit 1
CMD ["ranker-serve"]
