# wattlens container image. From a checkout:
#
#   docker build -t wattlens .            (or: podman build -t wattlens .)
#
# The build stage builds wattlens' wheel from the source tree and installs it, with its dependencies, into a
# virtualenv; the runtime stage is the base plus that virtualenv: no wheels, no pip, no compilers.
# .github/workflows/release.yml builds it for linux/amd64 and linux/arm64 and pushes it to GHCR.
#
# Build arguments:
#   BASE    any image with python3 (>= 3.11) and its venv module; both stages use it, so the venv's
#           interpreter link stays valid. Default: the official Python slim image.
#   EXTRAS  `kubernetes,otlp` (default): the client for the pod watch (apiWatch / kubernetes_api: true, ~65 MB)
#           and the OTLP/HTTP exporter (otlp_endpoint, ~10 MB); set it empty for an image without them, or add
#           otlp-grpc for otlp_protocol=grpc (grpcio, ~19 MB).
#   WHEELS  offline builds: a directory inside the build context (e.g. dist/wheels) holding wheels for every
#           dependency and for the build backend (hatchling); pip then uses it instead of an index. The
#           project's own wheel is still built here, from the source tree. (tests/test_image.py builds so.)
#   VERSION the version in the OCI labels; the release workflow passes the tag. Default: exporter/__init__.py's.
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG EXTRAS=kubernetes,otlp
ARG WHEELS=
WORKDIR /src
# .dockerignore lets in only what the wheel is built from (and the WHEELS directory).
COPY . .
# pip's own cache is off; the wheel is built in /tmp and only the installed venv leaves this stage.
RUN set -eu; \
    if [ -n "$WHEELS" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="/src/$WHEELS"; fi; \
    export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1; \
    python3 -m venv /opt/wattlens; \
    /opt/wattlens/bin/python -m pip wheel --no-deps --wheel-dir /tmp/dist /src; \
    wheel=$(ls /tmp/dist/wattlens-*.whl); \
    /opt/wattlens/bin/python -m pip install "${wheel}${EXTRAS:+[$EXTRAS]}"; \
    /opt/wattlens/bin/python -m pip uninstall --yes pip setuptools; \
    /opt/wattlens/bin/wattlens --version

# The image that runs: the base plus the venv.
FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="wattlens" \
      org.opencontainers.image.description="Read-only node power exporter for Prometheus: RAPL, model, NVIDIA GPUs, attributed to workloads" \
      org.opencontainers.image.source="https://github.com/wattlens/wattlens" \
      org.opencontainers.image.url="https://github.com/wattlens/wattlens" \
      org.opencontainers.image.documentation="https://github.com/wattlens/wattlens/blob/main/docs/kubernetes.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# No pip in the image: the official Python images ship one in the system interpreter (a Debian base has none).
RUN if python3 -m pip --version >/dev/null 2>&1; then \
        python3 -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel; \
    fi
COPY --from=build /opt/wattlens /opt/wattlens
# Bytecode was compiled at install time; the root filesystem is read-only at run time.
ENV PATH=/opt/wattlens/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# USER 0, on purpose and with nothing else: since Linux 5.10 /sys/class/powercap/*/energy_uj is mode 0400
# root (CVE-2020-8694), and reading a file one owns needs no capability. Run it with every capability
# dropped, no-new-privileges and a read-only root (the chart and deploy/daemonset do); where UID 0 is not
# allowed, see the chart's nonRoot values and docs/permissions.md.
# hadolint ignore=DL3002
USER 0
EXPOSE 9875
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/wattlens/bin/wattlens"]
CMD ["serve"]
