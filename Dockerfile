# syntax=docker/dockerfile:1
#
# resizer image: one entry point, `resizer`; the command picks the role.
#   docker run IMAGE serve --host 0.0.0.0 --port 8080   (the default CMD)
#   docker run IMAGE work
#   docker run IMAGE recover --every 30
#
# Stage 1 resolves the runtime dependencies from poetry.lock (main group only, hashes checked)
# into /opt/venv and installs the project into it as a wheel. Stage 2 copies only /opt/venv:
# no poetry, no compiler, no build cache, no sources. Pillow's wheels bundle their codecs,
# so the runtime stage needs no extra system libraries.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build

ARG POETRY_VERSION=2.5.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_NO_INTERACTION=1 \
    POETRY_VIRTUALENVS_CREATE=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Poetry lives in its own venv, which stays in this stage.
RUN python -m venv /opt/poetry \
    && /opt/poetry/bin/pip install --no-cache-dir "poetry==${POETRY_VERSION}" \
    && python -m venv /opt/venv

WORKDIR /src

# Dependencies first: this layer is rebuilt only when the lock file changes, not on every code edit.
COPY pyproject.toml poetry.lock README.md ./
# --compile: poetry writes no .pyc by default, and the runtime (read-only, PYTHONDONTWRITEBYTECODE)
# would then recompile every module at each start, every healthcheck included (~2x slower).
RUN /opt/poetry/bin/poetry install --only main --no-root --no-directory --compile

# Then the project itself, as a regular (non-editable) wheel, so /opt/venv is self-contained.
COPY resizer ./resizer
RUN /opt/poetry/bin/poetry build --format wheel --output /tmp/dist \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
    && /opt/venv/bin/resizer --help >/dev/null


FROM python:${PYTHON_VERSION}-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot without resolving names.
RUN groupadd --system --gid 10001 resizer \
    && useradd --system --uid 10001 --gid resizer --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin resizer

COPY --from=build /opt/venv /opt/venv

# Nothing installs anything at run time: no pip, in the venv or beside the interpreter.
RUN /usr/local/bin/python -m pip uninstall --yes --quiet pip setuptools wheel \
    && rm -rf /opt/venv/bin/pip* /opt/venv/lib/python*/site-packages/pip*
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# Graceful stop: serve, work and recover all handle SIGTERM (the worker finishes its current
# task, then exits 0). The exec-form ENTRYPOINT runs `resizer` with no shell in between to
# swallow the signal, so `docker stop` reaches it directly. Where it runs as PID 1, the kernel
# drops a SIGTERM that comes before its handlers are installed (its first second): hence
# `init: true` in docker-compose.yml and `docker run --init` (an init as PID 1 that forwards
# signals and reaps children), and shareProcessNamespace in deploy/k8s.
STOPSIGNAL SIGTERM

# One check for every role, with no curl in the image: the worker and recover roles by the age
# of the file their loop touches, else the web role through its /health.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["resizer", "healthcheck", "--role", "auto"]

ENTRYPOINT ["resizer"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
