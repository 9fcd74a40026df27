"""Posting alerts to Alertmanager's HTTP API v2 (POST /api/v2/alerts), with retries.

What may heal is retried with exponential back-off and jitter until Alertmanager accepts or the
forwarder is stopped: connection errors and timeouts (it is down or restarting), 5xx, 408, 429,
and anything else that is not an answer about the alerts themselves (a redirect, which is not
followed: a POST redirected becomes a GET that would pass for acceptance). Any other 4xx means
Alertmanager refuses what it was sent and would refuse it again: the request is then split into
single alerts, so that only the refused ones are dropped (logged and counted) and the rest get
through; a refused alert never blocks the ones after it. Alertmanager keeps the valid alerts of
a request it answers 400, so posting them again one by one only repeats them, which is harmless:
it de-duplicates alerts on their labels.
"""

from __future__ import annotations

import http.client
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog

from stream_detector import __version__
from stream_detector.config import ALERTMANAGER_ALERTS_PATH

log = structlog.get_logger(__name__)

# Alerts per request: one request per re-post of thousands of open episodes would be a large body
# and, refused, the slowest to split; a few hundred keep each one small.
MAX_ALERTS_PER_REQUEST: Final = 500
# 4xx answers that say "later", not "never".
_RETRYABLE_CLIENT_ERRORS: Final = frozenset({408, 429})
_DETAIL_CHARS: Final = 300


class PostInterrupted(Exception):
    """Stopped before Alertmanager accepted everything: what came after the last accepted post
    must not be committed."""


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: doubling from `initial_s`, capped at `max_s`, with jitter."""

    initial_s: float
    max_s: float

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after `failures` failures in a row: a random point in the upper half of the
        doubled delay, so forwarders that lost Alertmanager together do not return in step."""
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 64))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass
class PostResult:
    """What became of the alerts of one `post`."""

    accepted: int = 0
    refused: int = 0


@dataclass(frozen=True)
class _Answer:
    status: int | None  # None: no HTTP answer at all (connection refused, reset, timeout)
    detail: str

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def final(self) -> bool:
        """Accepted, or refused for good: retrying the same request would get the same answer."""
        return self.accepted or (
            self.status is not None
            and 400 <= self.status < 500
            and self.status not in _RETRYABLE_CLIENT_ERRORS
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect comes back as the HTTPError it is, never followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class AlertmanagerClient:
    """Posts alert lists to one Alertmanager; `post` returns once every alert was accepted or
    refused for good, or raises PostInterrupted when `stop` is set while it is retrying."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        backoff: Backoff,
        stop: threading.Event,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = base_url + ALERTMANAGER_ALERTS_PATH
        self._timeout_s = timeout_s
        self._backoff = backoff
        self._stop = stop
        self._rng = rng if rng is not None else random.Random()
        self._opener = urllib.request.build_opener(_NoRedirects)
        self.retries = 0  # failed attempts so far, for the forwarder's totals

    def post(self, alerts: Sequence[dict[str, Any]]) -> PostResult:
        result = PostResult()
        for start in range(0, len(alerts), MAX_ALERTS_PER_REQUEST):
            self._post_all_or_each(alerts[start : start + MAX_ALERTS_PER_REQUEST], result)
        return result

    def _post_all_or_each(self, alerts: Sequence[dict[str, Any]], result: PostResult) -> None:
        answer = self._send_until_final(alerts)
        if answer.accepted:
            result.accepted += len(alerts)
        elif len(alerts) > 1:
            for alert in alerts:
                self._post_all_or_each([alert], result)
        else:
            result.refused += 1
            log.error(
                "alertmanager refused an alert; skipped",
                endpoint=self.endpoint,
                status=answer.status,
                error=answer.detail,
                labels=alerts[0].get("labels"),
            )

    def _send_until_final(self, alerts: Sequence[dict[str, Any]]) -> _Answer:
        body = orjson.dumps(list(alerts))
        failures = 0
        while True:
            answer = self._send(body)
            if answer.final:
                return answer
            failures += 1
            self.retries += 1
            delay = self._backoff.delay(failures, self._rng)
            log.warning(
                "alertmanager unavailable; retrying",
                endpoint=self.endpoint,
                status=answer.status,
                error=answer.detail,
                failures=failures,
                retry_in_s=round(delay, 2),
            )
            if self._stop.wait(delay):
                raise PostInterrupted(
                    f"stopped while {self.endpoint} was unavailable ({answer.detail})"
                )

    def _send(self, body: bytes) -> _Answer:
        request = urllib.request.Request(
            self.endpoint,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"stream-detector/{__version__}",
            },
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                response.read()
                return _Answer(response.status, "")
        except urllib.error.HTTPError as exc:
            return _Answer(exc.code, _excerpt(exc))
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
            return _Answer(None, str(getattr(exc, "reason", exc)) or type(exc).__name__)


def _excerpt(error: urllib.error.HTTPError) -> str:
    """The start of an error answer's body (Alertmanager says there what it refused), or the
    status line when the body cannot be read."""
    try:
        text = error.read(_DETAIL_CHARS).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        text = ""
    return text or f"{error.code} {error.reason}"
