"""`stream-detector init --sample`: read, plan, render, check that it loads, write."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stream_detector.config import ConfigError, KafkaConfig, load_settings
from stream_detector.inspect.plan import plan_for
from stream_detector.inspect.render import render
from stream_detector.inspect.sample import Sample, SampleError, read_file
from stream_detector.inspect.topic import ConsumerFactory, read_topic

# A name ending so is meant as a file even when missing: no point asking a broker for it.
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".gz")


class InitError(Exception):
    """Why no draft was written: one line for the user, exit status 2."""


@dataclass(frozen=True)
class InitOptions:
    """The command's flags: the sample (a file, else a topic), where to write, how much to read."""

    sample: str
    out: Path | None = None
    records: int = 500
    timeout_s: float = 10.0


def read_sample(
    options: InitOptions, kafka: KafkaConfig, consumer_factory: ConsumerFactory | None = None
) -> Sample:
    """A file when the argument names one, else the topic of that name."""
    if options.records < 1:
        raise InitError(f"--records must be at least 1, got {options.records}")
    path = Path(options.sample)
    try:
        if path.is_file():
            return read_file(path, options.records)
        if path.exists() or "/" in options.sample or path.suffix.lower() in _FILE_SUFFIXES:
            raise InitError(f"--sample {options.sample} is not a readable file")
        return read_topic(
            options.sample, kafka, options.records, options.timeout_s, consumer_factory
        )
    except SampleError as exc:
        raise InitError(str(exc)) from None


def verified(text: str) -> None:
    """Refuse a draft that `run --config` would refuse, with the settings' own reason."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "draft.toml"
        path.write_text(text)
        try:
            load_settings(path)
        except ConfigError as exc:
            raise InitError(f"the drafted config does not load: {exc}") from None


def run_init(
    options: InitOptions, kafka: KafkaConfig, consumer_factory: ConsumerFactory | None = None
) -> int:
    """Write the draft to --out (or stdout); InitError when it cannot be made or would not load."""
    sample = read_sample(options, kafka, consumer_factory)
    try:
        plan = plan_for(sample)
    except SampleError as exc:
        raise InitError(str(exc)) from None
    topic = options.sample if sample.kind == "kafka" else None
    text = render(plan, topic, kafka.bootstrap_servers)
    verified(text)
    if options.out is None:
        sys.stdout.write(text)
        return 0
    try:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text)
    except OSError as exc:
        raise InitError(f"cannot write --out {options.out}: {exc.strerror}") from None
    print(f"config drafted from {sample.source} written to {options.out}", file=sys.stderr)
    return 0
