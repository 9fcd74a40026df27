#!/usr/bin/env bash
# The static deployment checks that CI runs on every run (the slow end-to-end one is
# scripts/deploy-test.sh): `docker-compose config` on the compose files, a schema check of the
# Kubernetes manifests and the rules that span files, all in tests/unit/test_deploy_static.py.
#
# Installs Debian's docker-compose when no compose is found (the test fails without one when
# CI=true), then runs that test file.
#
#   scripts/validate-deploy.sh                  install what is missing, then check
#   scripts/validate-deploy.sh --install-only   only install (e.g. from .ci/run before `make test`)
#   env: PYTHON (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"

. scripts/lib/root.sh

have_compose() {
    command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1
}

if ! have_compose; then
    echo "validate-deploy: no docker compose found; installing Debian's docker-compose"
    apt_install docker-compose
fi

if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi
exec "$PYTHON" -m pytest -q tests/unit/test_deploy_static.py
