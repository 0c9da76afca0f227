# otelproc, the sidecar image: `docker build -t otelproc .`
#
# Stage 1 rebuilds the CO-RE object from bpf/ with `make bpf` (the build is reproducible:
# on Debian bookworm's clang it gives the bytes committed in otelproc/bpf/). Stage 2 is
# the runtime: Python, libbpf.so.1 and the package; no compiler, no kernel headers.
#
# It runs as root holding only the capabilities the container grants: BPF, PERFMON,
# SYS_PTRACE and DAC_READ_SEARCH, everything else dropped (docker-compose.yml,
# deploy/kubernetes/). Non-root cannot work: Docker and Kubernetes give a non-root process
# no effective capabilities (they set no ambient ones), and file capabilities would have to
# go on the Python interpreter, granting them to every Python program in the image.

# bpf builds the object with clang and llvm-strip; only the object leaves this stage.
FROM debian:bookworm-slim AS bpf
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends clang llvm make libbpf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY bpf/ bpf/
RUN mkdir -p otelproc/bpf && make bpf

# runtime: Python, libbpf1 and the package.
FROM python:3.11-slim-bookworm
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libbpf1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY otelproc/ otelproc/
COPY --from=bpf /src/otelproc/bpf/otelproc.bpf.o otelproc/bpf/otelproc.bpf.o
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore . \
    && rm -rf /src
WORKDIR /

# The health port the deployments give it (OTELPROC_HEALTH_PORT: /healthz, /readyz); they
# also mount a volume on /var/lib/otelproc, where the state file lives.
EXPOSE 9464
# The console script, not `python -m otelproc`: its kernel name (comm) is `otelproc`,
# so the sidecar never matches itself against the default `python,python3,...` list.
ENTRYPOINT ["otelproc", "run"]
