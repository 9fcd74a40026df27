"""A real Alertmanager for the forwarder's tests: Debian's `prometheus-alertmanager` as a child
process on a free loopback port, with its own config and storage and clustering off, and a
webhook receiver it notifies, so that resolved alerts (which its API no longer lists) can be
seen too.

The Debian package comes with a service of its own on port 9093; the tests never use that port,
and check that the process answering is theirs (its config names a receiver made up per test).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's


def alertmanager_binary() -> str:
    """The Alertmanager binary; fails in CI (which installs it), skips elsewhere with the fix."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(
            "Alertmanager is not installed and CI=true: the forwarder's tests must run in CI. "
            "Install it with scripts/install-alerting.sh (.ci/run does this)."
        )
    pytest.skip("Alertmanager is not installed: run `bash scripts/install-alerting.sh`")


class WebhookReceiver:
    """Collects the notifications Alertmanager sends to it (one JSON body per POST)."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.notifications.append(orjson.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def alerts(self, status: str) -> dict[str, dict[str, Any]]:
        """The notified alerts in `status` ('firing' / 'resolved'), latest by episode id."""
        return {
            alert["labels"]["episode_id"]: alert
            for notification in list(self.notifications)
            for alert in notification["alerts"]
            if alert["status"] == status
        }

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class AlertmanagerProcess:
    """One Alertmanager on `port`; `stop` and `start` again restart it on the same port and
    storage, losing its alerts (it keeps them in memory only) as a real restart does."""

    def __init__(self, binary: str, port: int, workdir: Path, webhook_url: str) -> None:
        self.binary = binary
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.receiver = f"sd-test-{uuid.uuid4().hex[:8]}"
        self.storage = workdir / "storage"
        self.config = workdir / "alertmanager.yml"
        self.log_path = workdir / "alertmanager.log"
        # Each episode a group of its own, notified at once and again within a second.
        self.config.write_text(
            "route:\n"
            f"  receiver: {self.receiver}\n"
            "  group_by: [episode_id]\n"
            "  group_wait: 100ms\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            f"  - name: {self.receiver}\n"
            "    webhook_configs:\n"
            f"      - url: {webhook_url}\n"
            "        send_resolved: true\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.path={self.storage}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",  # no clustering: no gossip port, no peers
                    "--log.level=debug",
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"alertmanager exited:\n{self.log()}")
            try:
                status = orjson.loads(self._get("/api/v2/status"))
            except (OSError, orjson.JSONDecodeError):
                time.sleep(0.1)
                continue
            assert self.receiver in status["config"]["original"], "not our alertmanager"
            assert status["cluster"]["status"] == "disabled"
            return
        raise AssertionError(f"alertmanager not ready within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def alerts(self) -> dict[str, dict[str, Any]]:
        """The alerts it holds as firing (resolved ones it no longer lists), by episode id."""
        return {
            alert["labels"]["episode_id"]: alert
            for alert in orjson.loads(self._get("/api/v2/alerts"))
        }

    def received(self, status: str) -> float:
        """alertmanager_alerts_received_total for `status` ('firing' / 'resolved') since start."""
        for family in text_string_to_metric_families(self._get("/metrics").decode()):
            for sample in family.samples:
                if sample.name == "alertmanager_alerts_received_total" and sample.labels == {
                    "status": status,
                    "version": "v2",
                }:
                    return sample.value
        raise AssertionError("alertmanager_alerts_received_total not found")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as response:
            return response.read()
