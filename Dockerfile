# syntax=docker/dockerfile:1
# KaVa inference server (`kava serve`) on a CUDA PyTorch image.
#   docker build -t kava .            then see docker-compose.yml (GPU) or docker-compose.cpu.yml
#   docker run --gpus all -p 8000:8000 -v "$PWD/models:/models:ro" kava   # each folder of ./models, by name
#   docker run -p 8000:8000 -v "$PWD/models:/models:ro" kava --adapter math=/models/math --device cpu
#                                                              (arguments append to `kava serve`)
# torch comes from the base image; pyproject's pin (torch>=2.6,<2.15) accepts it, so pip keeps it.
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    KAVA_HOST=0.0.0.0 \
    KAVA_PORT=8000 \
    KAVA_ADAPTER_DIR=/models

WORKDIR /app

# 1. Dependencies only, read from pyproject.toml: this layer is rebuilt when the dependency
#    list changes, not when the code does.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. The code (the built-in model ships inside the kava package), installed without deps.
COPY kava ./kava
COPY training ./training
COPY server ./server
COPY benchmarks ./benchmarks
COPY kava_cli ./kava_cli
COPY clients ./clients
COPY README.md ./
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# 3. Run as an unprivileged user (numeric, so runAsNonRoot-style checks can verify it); the
#    HF cache and /models are the mount points. Each adapter folder in /models is served under
#    its folder name (KAVA_ADAPTER_DIR); with none there, the built-in model is.
RUN groupadd --gid 10001 kava \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin kava \
    && mkdir -p "$HF_HOME" /models \
    && chown -R 10001:10001 "$HF_HOME" /models
USER 10001:10001

EXPOSE 8000
# Liveness, as in SERVING.md: /health is 200 while the process and the engine loop are alive.
# Python rather than curl: the runtime image is not guaranteed to ship curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# SIGTERM (docker stop) drains: /ready turns 503, queued requests finish, then the server exits.
STOPSIGNAL SIGTERM
# `docker run kava --adapter ...` appends flags; every KAVA_* variable works as well.
ENTRYPOINT ["kava", "serve"]
