# syntax=docker/dockerfile:1
#
# squeezenet_saliency on TorchServe 0.12.0: ImageNet class + gradient saliency map, as JSON.
#
#   bash scripts/setup.sh          # builds model_store/squeezenet_saliency.mar, which is copied in
#   docker build -t squeezenet-saliency:1.0.0-gpu .
#   docker run --rm --gpus all -p 8080:8080 --name saliency squeezenet-saliency:1.0.0-gpu
#
# CPU variant:
#   docker build --build-arg BASE_IMAGE=pytorch/torchserve:0.12.0-cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#       -t squeezenet-saliency:1.0.0-cpu .
#
# Only the inference API is published (0.0.0.0:8080 in the container, token authorization on);
# management (8081) and metrics (8082) stay on the container's loopback. docs/deployment.md says
# how to get the token, expose metrics to Prometheus, and run it on Kubernetes (deploy/k8s/).

ARG BASE_IMAGE=pytorch/torchserve:0.12.0-gpu

# uv, only to install a standalone CPython 3.11 and our requirements (removed afterwards).
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# checkov:skip=CKV_DOCKER_7:The tag is pinned through BASE_IMAGE (0.12.0-gpu or 0.12.0-cpu); checkov does not resolve build arguments.
FROM ${BASE_IMAGE}

# Torch: ours, not the base image's. The official 0.12.0 images carry Python 3.9 in /home/venv
# with torch 2.4 (CUDA 12.1). Our pins (torch 2.14.1, numpy
# 2.4.6, ...) need Python >= 3.11, and every test and measurement was made with exactly
# requirements.txt. So the image gets its own Python 3.11 venv with requirements.txt, and
# TorchServe 0.12.0 (the base image's version, pinned there too) runs from it. What the base
# image still gives: Java 17 for the front end, the model-server user, NVIDIA's container
# environment (NVIDIA_VISIBLE_DEVICES, nvidia-smi, which TorchServe uses to count GPUs).
# The price: the base's unused venv stays in a lower layer. torch 2.14.1 from PyPI is a CUDA 13
# build that brings its own CUDA libraries and needs an NVIDIA driver >= 580 on the host; set
# TORCH_INDEX_URL to a PyTorch index with another build of the same version for older drivers.
ARG PYTHON_VERSION=3.11
ARG TORCH_INDEX_URL=""

USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=uv /uv /usr/local/bin/uv
COPY requirements.txt /opt/saliency/requirements.txt
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
        export UV_EXTRA_INDEX_URL="${TORCH_INDEX_URL}" UV_INDEX_STRATEGY=unsafe-best-match; \
    fi \
    && uv venv --managed-python --python "${PYTHON_VERSION}" /opt/saliency/venv \
    && uv pip install --python /opt/saliency/venv/bin/python --compile-bytecode \
        -r /opt/saliency/requirements.txt \
    && /opt/saliency/venv/bin/python -c "import torch, torchvision, ts; print('torch', torch.__version__)" \
    && rm /usr/local/bin/uv

# The model archive (built by scripts/setup.sh), the metrics the handler declares, the container's
# TorchServe config: the repository's production config.properties plus container.properties,
# whose lines come later and so override (java.util.Properties: the last one wins).
COPY model_store/squeezenet_saliency.mar /opt/saliency/model-store/
COPY handler/metrics.yaml deploy/docker/log4j2.xml /opt/saliency/
COPY config.properties deploy/docker/container.properties /opt/saliency/conf/
COPY --chmod=0755 deploy/docker/entrypoint.sh /opt/saliency/bin/entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.py /opt/saliency/bin/healthcheck
RUN { cat /opt/saliency/conf/config.properties; echo; \
        cat /opt/saliency/conf/container.properties; } > /opt/saliency/config.properties \
    && chmod -R a+rX /opt/saliency /opt/python

# Writable at run time: the working directory (key_file.json) and /tmp (TorchServe's pid file,
# unpacked model, worker sockets). Everything else can be read-only (see deploy/k8s/).
ENV PATH=/opt/saliency/venv/bin:${PATH} \
    HOME=/home/model-server \
    TEMP=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE
WORKDIR /home/model-server
# The base image's non-root user, by name: its uid is the base image's business (1000 in the
# official images); Kubernetes sets runAsUser explicitly (deploy/k8s/deployment.yaml).
# hadolint ignore=DL3066
USER model-server

EXPOSE 8080

# /ping needs the inference token: the script reads key_file.json from the working directory,
# and checks that a worker of the model is READY (management API, on loopback).
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["/opt/saliency/bin/healthcheck", "ready"]

# The entry point turns SIGTERM into `torchserve --stop` (a clean stop of the JVM and workers).
ENTRYPOINT ["/opt/saliency/bin/entrypoint"]
CMD ["torchserve", "--start", "--foreground", "--ncs", \
     "--ts-config", "/opt/saliency/config.properties", \
     "--model-store", "/opt/saliency/model-store", \
     "--log-config", "/opt/saliency/log4j2.xml"]
