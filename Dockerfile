# syntax=docker/dockerfile:1.7
# One image for the four services; the command picks one:
#   docker run IMAGE gateway | auth | score | broadcaster | scoreboard-migrate | scoreboard-topics
#   docker run IMAGE auth rotate-keys        (operator sub-commands, docs/operations.md)
#
# Both stages use the same base so the virtualenv's interpreter link stays valid when it is copied.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
# Bytecode is compiled at build time because the root filesystem is read-only at run time; the
# venv is copied into the runtime stage, so link mode must be copy, not hardlink to a cache.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# Third-party dependencies first, from the lock file alone: this layer is reused until uv.lock or
# a pyproject.toml changes, not on every source edit.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/pyproject.toml
COPY libs/testkit/pyproject.toml libs/testkit/pyproject.toml
COPY services/gateway/pyproject.toml services/gateway/pyproject.toml
COPY services/score/pyproject.toml services/score/pyproject.toml
COPY services/broadcaster/pyproject.toml services/broadcaster/pyproject.toml
COPY services/auth/pyproject.toml services/auth/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-install-workspace --no-install-package testkit

# Then our own packages, installed as wheels (--no-editable) so /app/.venv is self-contained and
# the source tree stays behind in this stage.
COPY libs libs
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable --no-install-package testkit


FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="scoreboard" \
      org.opencontainers.image.description="Live scoreboard: gateway, auth, score, broadcaster" \
      org.opencontainers.image.source="https://example.invalid/scoreboard"
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 scoreboard \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin scoreboard
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/app/.venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SCOREBOARD_HOST=0.0.0.0
WORKDIR /app
USER 10001:10001
# gateway 8080, auth 8081, score 8082 (health and metrics only), broadcaster 8083.
EXPOSE 8080 8081 8082 8083
# No ENTRYPOINT: the console scripts are on PATH, so `args`/`command` choose the program. Each
# service handles SIGTERM itself (aiohttp's graceful drain), so no init process is needed as PID 1.
CMD ["gateway"]
