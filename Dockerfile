# syntax=docker/dockerfile:1.7
#
# clipsearch images. One Dockerfile, four targets (see docs/DEPLOY.md):
#
#   gpu        the search service / pipeline jobs for GPU nodes: CUDA 13.0 base + torch cu130 wheels
#              docker buildx build --target gpu -t clipsearch:gpu .
#   cpu        the search service for CPU nodes, without torch: it answers text queries with the ONNX query
#              encoder the registered index artifact carries (the k8s `cpu` overlay, laptops, CI)
#              docker buildx build --target cpu -t clipsearch:cpu .
#   cpu-torch  the same code with CPU-only torch: pipeline stages on CPU, or serving an artifact without encoders
#              docker buildx build --target cpu-torch -t clipsearch:cpu-torch .
#   mlflow  the MLflow tracking server (mlflow + PostgreSQL driver + boto3 for S3 artifacts)
#           docker buildx build --target mlflow -t clipsearch-mlflow .
#
# CLIP weights: by default nothing is baked in and the pod either mounts a checkpoint (a volume at
# /models/clip) or downloads the open_clip tag `openai` into the cache volume on first start. To bake a
# checkpoint in (air-gapped clusters), put the file in the build context and name it:
#   docker buildx build --target gpu \
#     --build-arg CLIP_WEIGHTS=data/weights/open_clip_pytorch_model.bin \
#     --build-arg CLIP_WEIGHTS_SHA256=<sha256 of the file> \
#     --build-arg CLIP_PRETRAINED=/models/clip/open_clip_pytorch_model.bin -t clipsearch:gpu-baked .
# Nothing is downloaded for the weights at build time; docs/DEPLOY.md shows how to fetch the file once.
#
# Runtime contract: runs as uid 10001 with a read-only root filesystem; the only writable paths are the
# /cache volume (index cache, HF/XDG/torch caches) and /tmp. No secret is read at build time: the Gemini key
# and admin token arrive as environment variables from a Kubernetes Secret at run time.

# checkov:skip=CKV_DOCKER_7:Base images come from the pinned ARGs above/below (debian:bookworm-slim, nvidia/cuda:13.0.1-base-ubuntu24.04, uv:0.13.8); checkov cannot resolve FROM ${ARG}.
ARG UV_VERSION=0.13.8
ARG PYTHON_VERSION=3.11.14
ARG DEBIAN_IMAGE=debian:bookworm-slim
# torch 2.14.1+cu130 needs CUDA 13.0 user space (shipped inside the nvidia-* wheels) and an NVIDIA driver >= 580
# on the node. The `base` flavour carries the CUDA compat layer and the NVIDIA_* variables the device plugin
# reads; the `runtime` flavour would add a second copy of cuBLAS/cuDNN that torch never loads.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------------------------------------------------
# python: a relocatable CPython (python-build-standalone, via uv) in /opt/python and an empty venv in
# /opt/venv. The same interpreter serves the Debian and the Ubuntu/CUDA runtime images, so both targets run
# the Python version the project pins (3.11) whatever the base distribution ships.
FROM ${DEBIAN_IMAGE} AS python
ARG PYTHON_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_NO_CACHE=1
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv \
    && /opt/venv/bin/python --version

# ---------------------------------------------------------------------------------------------------------
# deps-*: third-party dependencies only (from pyproject.toml, pinned by constraints.txt), so a source change
# does not reinstall torch. TORCH_INDEX_URL picks the torch flavour; PyPI stays the index for everything else
# (pip takes the highest matching version across both, and 2.14.1+cu130 / 2.14.1+cpu sort above 2.14.1).
FROM python AS deps-gpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN /opt/venv/bin/python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        -c constraints.txt -r requirements.txt

FROM python AS deps-cpu
# The CPU-only torch wheels: no 3 GB of CUDA libraries on CPU nodes.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN /opt/venv/bin/python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        -c constraints.txt -r requirements.txt

# deps-serve: the torch-free query service (`cpu` target): every runtime dependency except torch, torchvision,
# open-clip-torch and onnxscript, which only the pipeline (embedding, ONNX export) needs. No other dependency
# pulls torch back in (benchmarks/image_size.py walks the closure).
FROM python AS deps-serve
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN /opt/venv/bin/python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; skip = {'torch', 'torchvision', 'open-clip-torch', 'onnxscript'}; print('\n'.join(d for d in deps if re.split(r'[^A-Za-z0-9_.-]', d, maxsplit=1)[0] not in skip))" > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt -r requirements.txt

# ---------------------------------------------------------------------------------------------------------
# app: the project itself, installed (not editable) the way the service contract says:
# `pip install -c constraints.txt .`, with the dependencies already satisfied by the stage it builds on.
FROM deps-gpu AS app-gpu
COPY clipsearch/ clipsearch/
COPY training/ training/
COPY services/ services/
COPY README.md ./
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps -c constraints.txt . \
    && /opt/venv/bin/pip check

FROM deps-cpu AS app-cpu
COPY clipsearch/ clipsearch/
COPY training/ training/
COPY services/ services/
COPY README.md ./
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps -c constraints.txt . \
    && /opt/venv/bin/pip check

# pip check would name the pipeline-only packages as missing: instead, prove the service imports without torch.
FROM deps-serve AS app-serve
COPY clipsearch/ clipsearch/
COPY training/ training/
COPY services/ services/
COPY README.md ./
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps -c constraints.txt . \
    && /opt/venv/bin/python -c "import sys, services.search.app; assert 'torch' not in sys.modules, 'cpu image imports torch'"

# ---------------------------------------------------------------------------------------------------------
# weights: /models/clip, empty unless CLIP_WEIGHTS names a checkpoint inside the build context. The context
# is bind-mounted only for this RUN, so nothing but the one named file can reach a layer.
FROM python AS weights
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG CLIP_WEIGHTS=""
ARG CLIP_WEIGHTS_SHA256=""
RUN --mount=type=bind,source=.,target=/context \
    mkdir -p /models/clip \
    && if [ -n "${CLIP_WEIGHTS}" ]; then \
         cp "/context/${CLIP_WEIGHTS}" /models/clip/open_clip_pytorch_model.bin; \
         if [ -n "${CLIP_WEIGHTS_SHA256}" ]; then \
           echo "${CLIP_WEIGHTS_SHA256}  /models/clip/open_clip_pytorch_model.bin" | sha256sum --check --strict; \
         fi; \
       fi \
    && chmod -R a+rX /models

# ---------------------------------------------------------------------------------------------------------
# cpu: the torch-free search service on Debian slim (text queries from the artifact's ONNX query encoder).
FROM ${DEBIAN_IMAGE} AS cpu
ARG CLIP_PRETRAINED=openai
LABEL org.opencontainers.image.title="clipsearch (cpu)" \
      org.opencontainers.image.description="CLIP semantic image search service, CPU build without torch" \
      org.opencontainers.image.source="https://github.com/clipsearch/clipsearch"
RUN groupadd --system --gid 10001 clipsearch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /cache/home \
        --shell /usr/sbin/nologin clipsearch \
    && mkdir -p /cache && chown 10001:10001 /cache
COPY --from=python /opt/python /opt/python
COPY --from=app-serve /opt/venv /opt/venv
COPY --from=weights /models /models
COPY params.yaml /app/params.yaml
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/cache/home \
    XDG_CACHE_HOME=/cache/xdg \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/cache/matplotlib \
    CLIPSEARCH_PARAMS=/app/params.yaml \
    CLIPSEARCH_SERVICE__CACHE_DIR=/cache/index \
    CLIPSEARCH_MODEL__DEVICE=cpu \
    CLIPSEARCH_MODEL__PRETRAINED=${CLIP_PRETRAINED}
WORKDIR /app
VOLUME ["/cache"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "services.search.app:app", "--host", "0.0.0.0", "--port", "8000", "--no-server-header", "--no-proxy-headers", "--timeout-graceful-shutdown", "10"]

# ---------------------------------------------------------------------------------------------------------
# cpu-torch: runtime image on Debian slim with CPU-only torch (pipeline stages; artifacts without encoders).
FROM ${DEBIAN_IMAGE} AS cpu-torch
ARG CLIP_PRETRAINED=openai
LABEL org.opencontainers.image.title="clipsearch (cpu-torch)" \
      org.opencontainers.image.description="CLIP semantic image search service and pipeline jobs, CPU build" \
      org.opencontainers.image.source="https://github.com/clipsearch/clipsearch"
RUN groupadd --system --gid 10001 clipsearch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /cache/home \
        --shell /usr/sbin/nologin clipsearch \
    && mkdir -p /cache && chown 10001:10001 /cache
COPY --from=python /opt/python /opt/python
COPY --from=app-cpu /opt/venv /opt/venv
COPY --from=weights /models /models
COPY params.yaml /app/params.yaml
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/cache/home \
    XDG_CACHE_HOME=/cache/xdg \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/cache/matplotlib \
    CLIPSEARCH_PARAMS=/app/params.yaml \
    CLIPSEARCH_SERVICE__CACHE_DIR=/cache/index \
    CLIPSEARCH_MODEL__DEVICE=cpu \
    CLIPSEARCH_MODEL__PRETRAINED=${CLIP_PRETRAINED}
WORKDIR /app
VOLUME ["/cache"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "services.search.app:app", "--host", "0.0.0.0", "--port", "8000", "--no-server-header", "--no-proxy-headers", "--timeout-graceful-shutdown", "10"]

# ---------------------------------------------------------------------------------------------------------
# mlflow: the tracking server (PostgreSQL backend store, S3 artifact store). Its own small venv: the server
# needs no torch, and its drivers stay out of the service image.
FROM python AS mlflow-build
ARG MLFLOW_VERSION=3.17.2
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==2.9.13" "boto3==1.44.5"

FROM ${DEBIAN_IMAGE} AS mlflow
LABEL org.opencontainers.image.title="clipsearch MLflow tracking server"
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin mlflow
COPY --from=python /opt/python /opt/python
COPY --from=mlflow-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
# Backend and artifact locations come from the environment (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION).
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--serve-artifacts"]

# ---------------------------------------------------------------------------------------------------------
# gpu (default target): runtime image on the CUDA base for GPU nodes.
FROM ${CUDA_IMAGE} AS gpu
ARG CLIP_PRETRAINED=openai
LABEL org.opencontainers.image.title="clipsearch (gpu)" \
      org.opencontainers.image.description="CLIP semantic image search service and pipeline jobs, CUDA build" \
      org.opencontainers.image.source="https://github.com/clipsearch/clipsearch"
RUN groupadd --system --gid 10001 clipsearch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /cache/home \
        --shell /usr/sbin/nologin clipsearch \
    && mkdir -p /cache && chown 10001:10001 /cache
COPY --from=python /opt/python /opt/python
COPY --from=app-gpu /opt/venv /opt/venv
COPY --from=weights /models /models
COPY params.yaml /app/params.yaml
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/cache/home \
    XDG_CACHE_HOME=/cache/xdg \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/cache/matplotlib \
    CLIPSEARCH_PARAMS=/app/params.yaml \
    CLIPSEARCH_SERVICE__CACHE_DIR=/cache/index \
    CLIPSEARCH_MODEL__DEVICE=auto \
    CLIPSEARCH_MODEL__PRETRAINED=${CLIP_PRETRAINED} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
VOLUME ["/cache"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "services.search.app:app", "--host", "0.0.0.0", "--port", "8000", "--no-server-header", "--no-proxy-headers", "--timeout-graceful-shutdown", "10"]
