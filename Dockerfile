# syntax=docker/dockerfile:1
# otelai, CPU image: Python 3.11 slim, non-root, read-only-root friendly, pinned dependencies.
#
#   docker build -t otelai:0.1.0 .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 9464:9464 otelai:0.1.0
#
# Dependencies are the exact set in requirements/runtime.txt, installed without resolution
# (--no-deps) and checked with `pip check`. For reproducible builds pin the base image by digest
# too: --build-arg PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/otelai
COPY requirements/runtime.txt /tmp/runtime.txt
RUN /opt/otelai/bin/pip install --only-binary=:all: --no-deps -r /tmp/runtime.txt
COPY pyproject.toml README.md /src/
COPY otelai /src/otelai
RUN /opt/otelai/bin/pip install --no-deps /src \
    && /opt/otelai/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="otelai" \
      org.opencontainers.image.description="OpenTelemetry Collector companion: scores telemetry with ML models and forwards the high-value part" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, the one the Helm chart's securityContext names.
RUN groupadd --system --gid 10001 otelai \
    && useradd --system --uid 10001 --gid otelai --home-dir /var/lib/otelai --no-create-home \
       --shell /usr/sbin/nologin otelai \
    && mkdir -p /var/lib/otelai /var/cache/otelai \
    && chown otelai:otelai /var/lib/otelai /var/cache/otelai
COPY --from=build /opt/otelai /opt/otelai
# Caches (compiled kernels, engines) go under one directory the chart mounts writable.
ENV PATH=/opt/otelai/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/var/cache/otelai \
    NUMBA_CACHE_DIR=/var/cache/otelai/numba
WORKDIR /var/lib/otelai
USER 10001:10001
# OTLP gRPC, OTLP/HTTP, Prometheus /metrics with /healthz and /readyz.
EXPOSE 4317 4318 9464
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]
ENTRYPOINT ["otelai"]
CMD ["serve"]
