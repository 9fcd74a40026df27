"""Facts about the machine and software a benchmark ran on, so two JSON reports can be compared.

The load average is recorded at the start and the end: on a shared machine it is the first thing
to look at when two runs disagree.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_facts(device: torch.device) -> dict[str, Any]:
    import confluent_kafka

    from stream_detector import __version__
    from stream_detector.demo.broker import tansu_version

    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(usable) if usable is not None else os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "load_average_start": load_average(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads_default": torch.get_num_threads(),
        "python": platform.python_version(),
        "stream_detector": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "orjson": _version("orjson"),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "river": _version("river"),
        "tansu": tansu_version(),
    }
