#!/usr/bin/env bash
# Make a Docker daemon available for the integration tests, on a machine that may have none.
#
# Idempotent: does nothing when `docker info` already works. Otherwise installs Debian's docker.io
# when dockerd is missing and starts dockerd with no bridge, no iptables and no IP forwarding: the
# test containers use host networking on 127.0.0.1 only, so the daemon needs no network set-up
# (which a sandbox without NET_ADMIN could not do anyway).
set -euo pipefail

LOG_FILE="${DOCKERD_LOG:-/tmp/dockerd.log}"
WAIT_S="${DOCKERD_WAIT_S:-60}"

if docker info >/dev/null 2>&1; then
    echo "start-docker: docker is already running"
    exit 0
fi

. "$(dirname "$0")/lib/root.sh"

if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-docker: dockerd not found; installing docker.io"
    apt_install docker.io
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    echo "start-docker: starting dockerd (log: $LOG_FILE)"
    as_root nohup dockerd --bridge=none --iptables=false --ip-forward=false >"$LOG_FILE" 2>&1 &
fi

deadline=$((SECONDS + WAIT_S))
until docker info >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "start-docker: dockerd did not answer within ${WAIT_S}s; last log lines:" >&2
        tail -n 20 "$LOG_FILE" >&2 || true
        exit 1
    fi
    sleep 1
done
echo "start-docker: docker is ready"
