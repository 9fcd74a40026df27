#!/usr/bin/env sh
# Regenerate the demo's bundled model (stream_detector/demo/model/) reproducibly: the synthetic
# feed with a fixed seed and no anomalies, trained on the CPU with a fixed seed, then checked on
# the demo's own feed (prints its offline precision/recall as a JSON line). Takes several minutes.
set -eu
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m stream_detector.demo.bundled "$@"
