# syntax=docker/dockerfile:1
# Carry-On Gateway.
#
#   docker build -t carry-on-gateway:0.1.0 .                                  # CPU
#   docker build -t carry-on-gateway:0.1.0-cuda --build-arg ACCELERATOR=cuda .  # CUDA 12 + cuDNN 9
#   docker build -t carry-on-gateway:0.1.0-trainer --build-arg TRAINER=1 .     # + PyTorch: `carryon train-worker`
#
# glibc bases only: onnxruntime-node's prebuilt binaries do not run on Alpine (musl).
# The install and start steps live in scripts/ (run here and by test/e2e/image-steps.test.ts).
ARG ACCELERATOR=cpu
# 1: the training-worker image, with Debian's PyTorch for the carry-on trainer (trainer/), CPU only.
ARG TRAINER=0
ARG NODE_IMAGE=node:22-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${NODE_IMAGE} AS node

# cpu: the official Node image as is.
FROM ${NODE_IMAGE} AS os-cpu

# cuda: NVIDIA's CUDA 12 + cuDNN 9 runtime (what ORT's CUDA 12 provider links against), with the
# very Node binary and npm of the cpu image copied in (official builds need glibc >= 2.28; Ubuntu
# 22.04 has 2.35), so both flavours run the same Node.
FROM ${CUDA_IMAGE} AS os-cuda
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && node --version && npm --version
ENV CARRYON_EXECUTION_PROVIDER=cuda

# Shared by the deps and runtime stages, so native addons are built on the OS they run on.
FROM os-${ACCELERATOR} AS base
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 carryon \
    && useradd --system --uid 10001 --gid carryon --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin carryon
WORKDIR /app

FROM base AS deps
ARG ACCELERATOR
# Compilers only for the fallback: a native addon without a prebuilt binary for this platform
# (better-sqlite3 uses node-gyp then). This stage is discarded; only node_modules is kept.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 make g++ \
    && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json .npmrc ./
COPY scripts/image-install.sh ./scripts/
# The npm cache lives in a BuildKit cache mount: faster rebuilds, never in a layer.
RUN --mount=type=cache,target=/root/.npm ACCELERATOR=${ACCELERATOR} bash scripts/image-install.sh

FROM base AS runtime
ARG ACCELERATOR
ARG TRAINER
LABEL org.opencontainers.image.title="carry-on-gateway" \
      org.opencontainers.image.description="OpenAI-compatible inference gateway for GPT Carry-On" \
      org.opencontainers.image.licenses="MIT" \
      io.carryon.accelerator="${ACCELERATOR}"
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    CARRYON_DATA_DIR=/data
COPY --from=deps /app/node_modules ./node_modules
# tsx runs the sources directly (no build step): the image holds exactly what runs. Everything the
# process reads at run time is under src/ (worker entries included), plugins/ and bin/ (the CLI).
COPY package.json .npmrc ./
COPY bin ./bin
COPY src ./src
COPY plugins ./plugins
COPY models/README.md ./models/README.md
COPY scripts/image-start.sh scripts/image-healthcheck.mjs ./scripts/
# The trainer's Python (small) is in every image; its PyTorch only in the training-worker one
# (Debian bookworm's python3-torch with OpenBLAS; the CUDA base is Ubuntu, which has no such package).
COPY trainer/carryon_train ./trainer/carryon_train
COPY trainer/python trainer/carryon-train ./trainer/
RUN if [ "${TRAINER}" = 1 ]; then \
      if [ "${ACCELERATOR}" != cpu ]; then echo "TRAINER=1 builds on ACCELERATOR=cpu only" >&2; exit 1; fi; \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-torch python3-numpy libopenblas0-pthread \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# The app tree stays root-owned (read-only to the gateway); only /data is the gateway's.
RUN install -d -o 10001 -g 10001 -m 0750 /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
# The slim base has no curl: Node itself asks /health/live.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["node", "scripts/image-healthcheck.mjs"]
# tini is PID 1: it forwards SIGTERM to the gateway and reaps orphaned processes, which a PID 1 must
# do. image-start.sh checks the data folder is writable, then execs CMD, so node itself receives
# SIGTERM, drains in-flight requests and exits 0.
ENTRYPOINT ["/usr/bin/tini", "--", "bash", "scripts/image-start.sh"]
CMD ["node", "--import", "tsx", "src/app/main.ts"]
