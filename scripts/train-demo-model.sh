#!/usr/bin/env sh
# Regenerate a demo scenario's bundled model reproducibly: stream_detector/demo/model/ (IoT), or
# with --scenario network stream_detector/demo/network_model/. The synthetic feed with a fixed seed
# and no anomalies, trained on the CPU with a fixed seed, then checked on the demo's own feed
# (prints its offline precision/recall as a JSON line). Takes a few minutes.
set -eu
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m stream_detector.demo.bundled "$@"
