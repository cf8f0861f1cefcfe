# The grpod image used by compose.yaml: one image, one role per container
# (migrate, worker, beat), chosen by the command.
FROM python:3.11-slim

ARG EXTRAS=local
# llama-cpp-python (in the `local` extra) compiles from source.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 grpod
WORKDIR /app
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY workers ./workers
COPY schema ./schema
COPY sdk ./sdk
RUN pip install --no-cache-dir ./sdk ".[${EXTRAS}]" \
    && mkdir -p /var/lib/grpod && chown grpod /var/lib/grpod

USER grpod
ENV GRPOD_HOME=/var/lib/grpod \
    GRPOD_LOG_FORMAT=json \
    HF_HUB_OFFLINE=1
ENTRYPOINT ["grpod"]
CMD ["worker"]
