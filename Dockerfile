# stream-monitor service image.
#   docker build -t stream-monitor .
#   docker run -v $PWD/deploy/config.toml:/etc/stream-monitor/config.toml:ro stream-monitor
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/var/cache/stream-monitor/numba

WORKDIR /app

COPY pyproject.toml README.md ./
COPY stream_monitor/ ./stream_monitor/
COPY schemas/ ./schemas/
RUN pip install --no-cache-dir . \
    # compile the detector kernels into the image, so no replica compiles them at start
    && python -c "from stream_monitor.detectors.kernels import warm_up; warm_up()"

# Default configuration; docker-compose.yml mounts deploy/config.toml over it.
COPY deploy/config.toml /etc/stream-monitor/config.toml

RUN useradd --system --uid 10001 --user-group --no-create-home \
        --shell /usr/sbin/nologin stream-monitor
USER stream-monitor

# Prometheus metrics and status page (service.metrics_port).
EXPOSE 9464

# SIGTERM (docker stop) triggers the graceful shutdown of `run`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["stream-monitor"]
CMD ["run", "-c", "/etc/stream-monitor/config.toml"]
