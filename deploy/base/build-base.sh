#!/usr/bin/env bash
# Make a minimal Debian bookworm + Python 3.11 image locally, for machines that reach a Debian
# mirror but no container registry: `debootstrap` a root filesystem and `docker import` it.
#
# The result stands in for `python:3.11-slim` as the Dockerfile's BASE_IMAGE. Python 3.11 because
# that is bookworm's python3 and the interpreter a locally held torch wheel (cp311) is built for.
# Idempotent: does nothing when the image exists, unless --force.
#
#   deploy/base/build-base.sh [--force]
#   env: SD_BASE_IMAGE (tag, default stream-detector/base:bookworm-py311),
#        DEBIAN_MIRROR (default http://deb.debian.org/debian)
set -euo pipefail

IMAGE="${SD_BASE_IMAGE:-stream-detector/base:bookworm-py311}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
# python3-venv brings ensurepip, so the Dockerfile can make a virtual environment the same way on
# this base and on python:3.11-slim; ca-certificates lets pip reach PyPI over HTTPS.
PACKAGES=python3,python3-venv,ca-certificates

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "build-base: $IMAGE already exists (pass --force to rebuild)"
    exit 0
fi

. "$(dirname "$0")/../../scripts/lib/root.sh"

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build-base: installing debootstrap"
    apt_install debootstrap
fi

rootfs="$(mktemp -d /tmp/sd-base.XXXXXX)"
cleanup() { as_root rm -rf "$rootfs"; }
trap cleanup EXIT

echo "build-base: debootstrap $SUITE from $MIRROR into $rootfs"
as_root debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"

# Nothing at run time reads these; leaving them out keeps the image small.
as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/info \
    "$rootfs"/usr/share/locale "$rootfs"/tmp/*

echo "build-base: importing as $IMAGE"
as_root tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$IMAGE"
docker run --rm --network none "$IMAGE" python3 -c 'import sys, venv, ssl; print("build-base: python", sys.version.split()[0])'
