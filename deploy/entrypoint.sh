#!/bin/sh
# Entrypoint of the stream-monitor image: prepares numba's cache, then execs
# `stream-monitor "$@"`, which becomes PID 1 and gets SIGTERM from `docker stop`.
#
# numba needs a cache directory it can write: one it can only read is refused
# (it checks by creating a file), and with no writable place at all the
# detector kernels cannot even be imported. On a read-only root filesystem
# NUMBA_CACHE_DIR is therefore a tmpfs, empty at every start. The kernels were
# compiled when the image was built, into a read-only seed directory; copying
# the seed into the tmpfs saves the compilation (about 5 s of CPU). The image
# compiles for the generic CPU (NUMBA_CPU_NAME), so the seed fits every host;
# should it not (the variable overridden), numba compiles into the tmpfs.
set -eu

seed=${STREAM_MONITOR_IMAGE_NUMBA_SEED:-/opt/stream-monitor/numba-cache}
cache=${NUMBA_CACHE_DIR:-}

if [ -n "$cache" ]; then
    probe="$cache/.writable.$$"
    if ! { mkdir -p "$cache" && : > "$probe"; } 2>/dev/null; then
        echo "stream-monitor: NUMBA_CACHE_DIR=$cache is not writable (read-only root filesystem?);" \
             "mount a tmpfs there, e.g. docker run --tmpfs $cache, or tmpfs: in docker-compose.yml" >&2
        exit 2
    fi
    rm -f "$probe"
    if [ -d "$seed" ]; then
        cp -R "$seed/." "$cache/"
    fi
fi

exec stream-monitor "$@"
