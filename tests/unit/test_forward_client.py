"""Posting to Alertmanager: retries with bounded, jittered back-off while it is down or answers
5xx, a 4xx dropping only the alerts it refuses, and a stop that interrupts the retries. Against a
tiny HTTP server on 127.0.0.1 that answers from a script."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from stream_detector.forward.alertmanager import (
    MAX_ALERTS_PER_REQUEST,
    AlertmanagerClient,
    Backoff,
    PostInterrupted,
)

FAST = Backoff(initial_s=0.01, max_s=0.05)


class ScriptedAlertmanager:
    """Answers POST /api/v2/alerts with the scripted (status, delay_s) in turn, then 200 at once;
    like Alertmanager, a 400 for a request holding an invalid alert (here: labelled bad="yes").
    Keeps the alerts of every request it answered."""

    def __init__(self, script: list[tuple[int, float]], port: int = 0) -> None:
        self.script = list(script)
        self.requests: list[list[dict[str, Any]]] = []
        self.methods: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                server.methods.append(("POST", self.path))
                alerts = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, delay_s = server.script.pop(0) if server.script else (200, 0.0)
                time.sleep(delay_s)
                if status == 200 and any(a["labels"].get("bad") == "yes" for a in alerts):
                    status = 400
                server.requests.append(alerts)
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "/elsewhere")
                self.end_headers()
                self.wfile.write(b'"start time must be before end time"' if status == 400 else b"")

            def do_GET(self) -> None:  # noqa: N802 - a followed redirect would arrive here
                server.methods.append(("GET", self.path))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def alertmanager(request: pytest.FixtureRequest) -> Iterator[ScriptedAlertmanager]:
    server = ScriptedAlertmanager(getattr(request, "param", []))
    yield server
    server.close()


def client(
    url: str, *, stop: threading.Event | None = None, backoff: Backoff = FAST, timeout_s: float = 2
) -> AlertmanagerClient:
    return AlertmanagerClient(
        url,
        timeout_s=timeout_s,
        backoff=backoff,
        stop=stop if stop is not None else threading.Event(),
        rng=random.Random(0),
    )


def alert(n: int, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": "A", "n": str(n), **labels}, "annotations": {}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("alertmanager", [[(503, 0), (500, 0), (502, 0)]], indirect=True)
def test_5xx_is_retried_until_accepted(alertmanager: ScriptedAlertmanager) -> None:
    am = client(alertmanager.url)
    result = am.post([alert(1), alert(2)])
    assert (result.accepted, result.refused) == (2, 0)
    assert am.retries == 3
    assert alertmanager.requests == [[alert(1), alert(2)]] * 4
    assert set(alertmanager.methods) == {("POST", "/api/v2/alerts")}


@pytest.mark.parametrize("alertmanager", [[(429, 0), (408, 0)]], indirect=True)
def test_too_many_requests_and_request_timeout_are_retried(
    alertmanager: ScriptedAlertmanager,
) -> None:
    assert client(alertmanager.url).post([alert(1)]).accepted == 1
    assert len(alertmanager.requests) == 3


@pytest.mark.parametrize("alertmanager", [[(200, 1.0)]], indirect=True)
def test_an_answer_slower_than_the_timeout_is_retried(alertmanager: ScriptedAlertmanager) -> None:
    am = client(alertmanager.url, timeout_s=0.2)
    assert am.post([alert(1)]).accepted == 1
    assert am.retries == 1


@pytest.mark.parametrize("alertmanager", [[(302, 0)]], indirect=True)
def test_a_redirect_is_not_followed_as_if_it_were_acceptance(
    alertmanager: ScriptedAlertmanager,
) -> None:
    am = client(alertmanager.url)
    assert am.post([alert(1)]).accepted == 1
    assert am.retries == 1
    assert alertmanager.methods == [("POST", "/api/v2/alerts")] * 2


def test_a_4xx_drops_only_the_alert_it_refuses(alertmanager: ScriptedAlertmanager) -> None:
    result = client(alertmanager.url).post([alert(1), alert(2, bad="yes"), alert(3)])
    assert (result.accepted, result.refused) == (2, 1)
    # The whole request first; once it is refused, one request per alert.
    assert alertmanager.requests == [
        [alert(1), alert(2, bad="yes"), alert(3)], [alert(1)], [alert(2, bad="yes")], [alert(3)]
    ]


def test_large_posts_go_in_several_requests(alertmanager: ScriptedAlertmanager) -> None:
    alerts = [alert(n) for n in range(MAX_ALERTS_PER_REQUEST + 1)]
    assert client(alertmanager.url).post(alerts).accepted == len(alerts)
    assert [len(r) for r in alertmanager.requests] == [MAX_ALERTS_PER_REQUEST, 1]


def test_an_unreachable_alertmanager_is_retried_until_it_comes_up() -> None:
    port = _free_port()
    am = client(f"http://127.0.0.1:{port}", backoff=Backoff(0.05, 0.2))
    results: list[Any] = []
    poster = threading.Thread(target=lambda: results.append(am.post([alert(1)])))
    poster.start()
    time.sleep(0.5)  # connections refused meanwhile
    assert not results and am.retries >= 2
    late = ScriptedAlertmanager([], port=port)
    try:
        poster.join(10)
        assert not poster.is_alive()
        assert results[0].accepted == 1 and late.requests == [[alert(1)]]
    finally:
        late.close()


def test_a_stop_interrupts_the_retries() -> None:
    stop = threading.Event()
    am = client(f"http://127.0.0.1:{_free_port()}", stop=stop, backoff=Backoff(5.0, 5.0))
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(PostInterrupted, match="unavailable"):
        am.post([alert(1)])
    assert time.monotonic() - started < 3.0


def test_back_off_doubles_up_to_its_bound_with_jitter_below_each_step() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0)
    rng = random.Random(1)
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (500, 30.0)]:
        delays = [backoff.delay(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered: forwarders do not come back in step
