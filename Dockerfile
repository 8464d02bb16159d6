# syntax=docker/dockerfile:1
# s3flow container image: `s3flow` is the entry point, `worker` the default command.
#
#   docker build -t s3flow:0.1.0 .
#   docker run --rm s3flow:0.1.0 --version
#   docker run --rm -e S3FLOW_CONFIG=/config/s3flow.toml -v "$PWD:/config:ro" s3flow:0.1.0
#
# The configuration comes from the environment (S3FLOW_* variables: the ECS task
# definitions of `s3flow provision --export cloudformation` carry it that way) or
# from a file named by S3FLOW_CONFIG. tests/integration/deploy/test_container_build.py
# repeats these steps (same wheel build, same install into a clean venv) without a
# container engine.

ARG PYTHON_VERSION=3.11

# --- build: the s3flow wheel and the wheels of its dependencies -------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/s3flow \
 && pip --python /opt/s3flow/bin/python install --no-index --find-links /wheels s3flow

# --- runtime: the virtualenv only (no compiler, no wheels, no pip), a non-root user -----
FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/s3flow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# text-to-pdf sets text in DejaVu (Latin, Greek, Cyrillic): the fonts come from Debian.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 s3flow \
 && useradd --system --uid 10001 --gid s3flow --create-home --home-dir /home/s3flow s3flow
COPY --from=build /opt/s3flow /opt/s3flow
USER 10001:10001
# A SQLite state store ('sqlite:.s3flow/state.db', the default) lives here.
WORKDIR /home/s3flow
ENTRYPOINT ["s3flow"]
CMD ["worker"]
