# MergeLab on a GPU host (or a Docker Space). PyPI's CUDA torch wheel brings its own CUDA runtime, so a slim Python
# image plus the host's NVIDIA driver is enough:
#   docker build -t mergelab . && docker run --gpus all -p 7860:7860 -v mergelab-models:/home/user/app/models mergelab
FROM python:3.11-slim

# Spaces convention: a non-root user with uid 1000 and HOME=/home/user; the app listens on 0.0.0.0:7860.
# Hosted mode (paths confined to ./models, limited uploads, no server paths in errors) is on; -e MERGELAB_HOSTED=0
# turns it off on a private host.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    MERGELAB_HOSTED=1

# CJK fonts: the zoo's Japanese tasks (三, 四) in screenshots and server-side renders, not empty boxes. Not pinned:
# the slim image's Debian release decides the version, and a pin would break when it moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-noto-cjk \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 user
USER 1000
WORKDIR /home/user/app

# The CUDA build of torch first (same version as requirements.txt pins, so pip keeps it), then the rest.
COPY --chown=user:user requirements.txt .
RUN pip install --user --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
    && pip install --user --no-cache-dir -r requirements.txt

COPY --chown=user:user . .
RUN mkdir -p models

EXPOSE 7860
CMD ["python", "app.py"]
