"""`stream-detector evaluate`: replay a labelled dataset through the real engine and the baselines.

The detector is exercised through `Detector.process`, the very call the Kafka service makes per
batch, so the figures describe the service and not a re-implementation of it. The baselines see
the same batches and are judged by the same alerting rules and the same metrics.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog

from stream_detector.config import ConfigError, Settings, settings_to_dict
from stream_detector.detector.artefact import ModelArtefact, load_artefact
from stream_detector.detector.facade import Detector
from stream_detector.detector.feedback import FeedbackEvent, read_feedback_file
from stream_detector.detector.training import train
from stream_detector.evaluation.baseline_detector import BaselineDetector, calibrate
from stream_detector.evaluation.baselines import (
    EventScorer,
    HalfSpaceTreesScorer,
    RollingZScore,
    river_available,
)
from stream_detector.evaluation.datasets import (
    SMAP_MSL_LABELS,
    LabelledDataset,
    Stream,
    build_stream,
    load_labelled_file,
    load_smap_msl,
)
from stream_detector.evaluation.heldout import cut_time
from stream_detector.evaluation.maintenance import (
    MAINTENANCE,
    load_maintenance,
    maintenance_sections,
)
from stream_detector.evaluation.mixed_scale import (
    MIXED_SCALE,
    load_mixed_scale,
    mixed_scale_sections,
)
from stream_detector.evaluation.operator_feedback import (
    feedback_summary,
    held_out_label,
    simulated_false_positives,
    write_feedback_file,
)
from stream_detector.evaluation.plots import matplotlib_available, plot_key
from stream_detector.evaluation.raw_events import (
    SCENARIO_TRAIN_FRACTION,
    load_raw_event_file,
    load_scenario,
    scenario_sections,
)
from stream_detector.evaluation.report import build_report, format_table, held_out_report
from stream_detector.evaluation.seeds import format_seed_table, seed_summary
from stream_detector.evaluation.skab import SKAB_FEATURES, is_skab, load_skab
from stream_detector.evaluation.trace import MethodTrace, TraceRecorder
from stream_detector.evaluation.westermo import DEFAULT_SIDE, load_westermo, westermo_sections
from stream_detector.scenarios.flows import SCENARIOS, labels_path_for

log = structlog.get_logger(__name__)

MODEL_METHOD = "lstm_autoencoder"
BASELINES = ("rolling_zscore", "half_space_trees")
WESTERMO = "westermo"
# Where a dataset given by name (e.g. `--dataset smap_msl`) is looked for, in order.
# A checkout keeps the labelled data sets in shared/data beside it (or inside it).
_REPO = Path(__file__).resolve().parents[2]
DATA_ROOTS = (Path("data"), _REPO / "shared" / "data", _REPO.parent / "shared" / "data")

Progress = Callable[[str, dict[str, Any]], None]

PROTOCOL_NOTES = (
    "Model fitted on the train parts only (presumed normal). Then every key's train series and "
    "its test series right after it are streamed through Detector.process, interleaved by time "
    "across keys in fixed-size batches like a multi-key topic; the train part warms the per-key "
    "window, normalisation and threshold state as a deployed detector's history would. Metrics "
    "count the test part only.",
    "An alert episode is active from the event that triggered its open alert to the end of its "
    "last exceeding window, the resolve alert's anomaly_end (the resolve itself comes "
    "episodes.cooldown calm windows later), or to the key's last event if never resolved.",
    "point_wise: each test event is a sample, predicted positive while an episode is active. "
    "point_adjusted: as point_wise, but a labelled range with any predicted event counts as "
    "wholly predicted. event_wise: a labelled range (maximal run of label 1) is detected if any "
    "episode overlaps it; an episode overlapping no labelled range is a false positive (the "
    "published SMAP/MSL definition). Group figures are micro-averages over keys.",
    "Detection delay: from a detected range's start to the first overlapping episode's open "
    "(0 if one was already active), in steps and in event-time seconds.",
    "Baselines see the same batches. Each scores every event; on the engine's cadence (a key's "
    "c-th event, c >= window.size, (c - window.size) % window.stride == 0) its window score is "
    "the max per-event score over the window's window.size events (its newest "
    "window.score_steps when set, as the model's score); window scores go through the "
    "engine's own AdaptiveThreshold and EpisodeTracker with the same threshold.* and episodes.* "
    "settings, and a global threshold = the train.calibration_quantile of its window scores over "
    "the train parts, as training calibrates the model's.",
    "rolling_zscore: |x - mean| / max(std, normalize.min_std) over the key's previous "
    "window.size - 1 events, max over features. half_space_trees: River MinMaxScaler | "
    "HalfSpaceTrees (River defaults: 10 trees, height 8, window 250; seed = train.seed), one "
    "model per key, score then learn per event; River's score s is reported as 1 / (1 - s), the "
    "inverse relative mass (same ranking; spreads the low-mass tail that River squeezes against "
    "1, which scored HST better under the same thresholds than raw s); no score before a key's "
    "first 250 events (River scores 0 until its first reference window is full).",
)
FEEDBACK_NOTE = (
    "Operator feedback (--feedback FILE) went into the model's feedback ledger, in file order, "
    "before streaming, as the service applies its feedback topic; the baselines run without it. "
    "A false_positive takes effect from the end of the episode it names, so the alert it marks "
    "fires again here and only later alerts of its key can be held back."
)


def resolve_dataset(name_or_path: str | Path) -> Path:
    """A path as given, or a dataset name looked up under DATA_ROOTS."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for root in DATA_ROOTS:
        if (root / path).exists():
            return root / path
    roots = ", ".join(str(r) for r in DATA_ROOTS)
    raise FileNotFoundError(f"dataset {name_or_path!r} is neither a path nor found under {roots}")


def load_dataset(
    source: str | Path,
    settings: Settings,
    *,
    spacecraft: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    train_fraction: float = 0.5,
) -> LabelledDataset:
    """SMAP/MSL for a directory holding labeled_anomalies.csv, SKAB for a directory of
    experiment files, else a labelled CSV/JSONL file."""
    path = resolve_dataset(source)
    if path.is_dir():
        if (path / SMAP_MSL_LABELS).exists():
            return load_smap_msl(path, spacecraft, channels)
        if is_skab(path):
            return load_skab(path)
        raise ValueError(
            f"{path} is a directory with neither {SMAP_MSL_LABELS} (SMAP/MSL) nor SKAB "
            "experiment files (*.csv.gz or *.csv)"
        )
    return load_labelled_file(path, settings, train_fraction)


def _make_scorer(name: str, settings: Settings, features: tuple[str, ...]) -> EventScorer:
    if name == "rolling_zscore":
        return RollingZScore(settings.window.size, len(features), settings.normalize.min_std)
    if name == "half_space_trees":
        return HalfSpaceTreesScorer(features, seed=settings.train.seed)
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


def _stream_all(
    stream: Stream,
    detector: Detector,
    baselines: Sequence[BaselineDetector],
    batch_size: int,
    progress: Progress | None,
) -> list[MethodTrace]:
    recorders = [TraceRecorder(MODEL_METHOD)] + [TraceRecorder(b.name) for b in baselines]
    started = time.perf_counter()
    n_batches = -(-len(stream) // batch_size)
    for i, (offset, decoded) in enumerate(stream.batches(batch_size), start=1):
        t0 = time.perf_counter()
        result = detector.process(decoded)
        recorders[0].seconds += time.perf_counter() - t0
        recorders[0].record(offset, result.scored, result.alerts, result.muted)
        for recorder, baseline in zip(recorders[1:], baselines, strict=True):
            t0 = time.perf_counter()
            scored, alerts = baseline.process(decoded)
            recorder.seconds += time.perf_counter() - t0
            recorder.record(offset, scored, alerts)
        if i % 50 == 0 or i == n_batches:
            info = {
                "batches": i,
                "of": n_batches,
                "events": min(offset + batch_size, len(stream)),
                "seconds": round(time.perf_counter() - started, 1),
            }
            log.info("evaluate streaming", **info)
            if progress is not None:
                progress("stream", info)
    return [recorder.finish(stream) for recorder in recorders]


def run_evaluation(
    settings: Settings,
    dataset: LabelledDataset,
    out_dir: Path,
    *,
    artefact: ModelArtefact | None = None,
    baselines: Sequence[str] = BASELINES,
    batch_size: int = 2048,
    plots: bool = True,
    progress: Progress | None = None,
    feedback: Sequence[FeedbackEvent] | None = None,
    split: float | None = None,
    write_false_positives: Path | None = None,
) -> dict[str, Any]:
    """Train (unless `artefact` is given), stream, score and write the evaluation of one dataset.

    Writes into `out_dir`: report.json (the returned dict), table.txt (format_table of it),
    model/ (the trained artefact, when trained here) and plots/<key>.png (one per key, unless
    `plots` is false or matplotlib is missing). `progress(stage, info)` is called per training
    epoch and every 50 streamed batches. A baseline whose library is missing is skipped with a
    note in the report rather than failing the run.

    `feedback` goes into the model's ledger, in order, before streaming (report["feedback"] says
    what it was). `split` (0..1) adds the figures of the test part after that share of its event
    time (report["held_out"]); `write_false_positives` is where the simulated operator writes a
    false_positive for each model episode judged false (over before the cut, with `split`).
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = build_stream(dataset)
    notes = list(PROTOCOL_NOTES)
    timing: dict[str, float] = {}

    if artefact is None:
        t0 = time.perf_counter()
        artefact = train(
            stream.training_batches(batch_size),
            settings,
            out_dir / "model",
            progress=None if progress is None else (lambda info: progress("train", info)),
        )
        timing["train_s"] = round(time.perf_counter() - t0, 1)
    detector = Detector(settings, artefact)
    for event in feedback or ():
        detector.feedback.apply(event)

    runners = _calibrated_baselines(baselines, settings, dataset, stream, batch_size, notes, timing)
    t0 = time.perf_counter()
    traces = _stream_all(stream, detector, runners, batch_size, progress)
    timing["stream_s"] = round(time.perf_counter() - t0, 1)

    header = {
        "model_version": detector.model_version,
        "global_thresholds": {
            MODEL_METHOD: artefact.metadata.global_threshold,
            **{runner.name: runner.global_threshold for runner in runners},
        },
        "events": {"streamed": len(stream), "test": int(stream.is_test.sum())},
        "batch_size": batch_size,
        "settings": settings_to_dict(settings),
        "notes": notes,
    }
    report = build_report(dataset, traces, header)
    if feedback is not None:
        report["feedback"] = feedback_summary(
            detector.feedback, traces[0].muted, dataset, detector.model_version
        )
        report["notes"].append(FEEDBACK_NOTE)
    cut_ts = None
    if split is not None:
        cut_ts = cut_time(stream, split)
        report["held_out"] = {
            **held_out_report(dataset, traces, split, cut_ts),
            "label": held_out_label(detector.feedback, cut_ts),
        }
    if write_false_positives is not None:
        events, counts = simulated_false_positives(dataset, traces[0], cut_ts)
        write_feedback_file(write_false_positives, events)
        report["false_positives_written"] = {"file": str(write_false_positives), **counts}

    if plots and matplotlib_available():
        t0 = time.perf_counter()
        _write_plots(out_dir / "plots", dataset, traces)
        timing["plots_s"] = round(time.perf_counter() - t0, 1)
    elif plots:
        report["notes"].append("plots skipped: matplotlib is not importable.")

    timing["total_s"] = round(time.perf_counter() - started, 1)
    report["timing"] = timing
    (out_dir / "report.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    (out_dir / "table.txt").write_text(format_table(report) + "\n")
    log.info("evaluation written", out_dir=str(out_dir), **timing)
    return report


def _calibrated_baselines(
    names: Sequence[str],
    settings: Settings,
    dataset: LabelledDataset,
    stream: Stream,
    batch_size: int,
    notes: list[str],
    timing: dict[str, float],
) -> list[BaselineDetector]:
    """Each baseline with its global threshold calibrated on the training part, as the model's
    is; one that cannot run or calibrate is skipped with a note instead of failing the run."""
    runners = []
    for name in names:
        if name == "half_space_trees" and not river_available():
            notes.append("half_space_trees skipped: the `river` package is not importable.")
            continue
        t0 = time.perf_counter()

        def make(name: str = name) -> EventScorer:
            return _make_scorer(name, settings, dataset.feature_names)

        try:
            threshold = calibrate(make, stream.training_batches(batch_size), settings)
        except ValueError as exc:  # e.g. HalfSpaceTrees scores nothing before 250 events a key
            notes.append(f"{name} skipped: {exc}.")
            log.warning("baseline skipped", baseline=name, reason=str(exc))
            continue
        runners.append(BaselineDetector(make(), settings, threshold))
        timing[f"calibrate_{name}_s"] = round(time.perf_counter() - t0, 1)
        log.info("baseline calibrated", baseline=name, global_threshold=threshold)
    return runners


def _write_plots(plot_dir: Path, dataset: LabelledDataset, traces: list[MethodTrace]) -> None:
    """One PNG per key: its values, labels, the model's scores, threshold and alerts."""
    plot_dir.mkdir(exist_ok=True)
    for key_id, channel in enumerate(dataset.channels):
        name = re.sub(r"[^\w.@+-]", "_", channel.key)  # a key may hold / or :
        plot_key(plot_dir / f"{name}.png", channel, key_id, traces, MODEL_METHOD)
        if (key_id + 1) % 20 == 0:
            log.info("evaluate plots", done=key_id + 1, of=len(dataset.channels))


EVALUATE_DESCRIPTION = """\
Replays labelled data through the same Detector.process the service runs, trains the model on each
key's presumed-normal leading part (unless --model), and scores it against two baselines (rolling
z-score, River HalfSpaceTrees) under the same threshold and episode rules: point-wise, point-
adjusted and event-wise precision / recall / F1 and detection delay. Writes report.json, table.txt
and a PNG per key into --out, and prints the table.

What it reads:
  --dataset smap_msl | DIR      NASA SMAP/MSL telemetry (a directory with labeled_anomalies.csv)
  --dataset skab | DIR          SKAB pump experiments (`;`-separated CSVs, one key each; the
                                first 400 rows of each are its train part, point-wise F1 with
                                FAR and MAR is the protocol's figure)
  --dataset FILE                a CSV/JSONL of events with a 0/1 input.label_field column
                                (a file of one series, without a key column: --set
                                input.key_field=@single_series)
  --dataset westermo [--side SIDE]
                                real industrial network flows (Westermo), bucketed per source
                                address; attacks are time spans of the whole feed (an alert on
                                any address inside one detects it), GOOD-SSH logins must not alert;
                                SIDE is a recording point: left (default), right, or any other
                                whose flows_SIDE.csv.gz sits beside the injection log
  --dataset mixed_scale         the demo's telemetry with each device scaled by 10^-3 .. 10^7
                                (generated; recall per decade: keys of any scale alike?)
  --dataset maintenance         the demo's telemetry with a benign maintenance job (labelled
                                normal) every 200 readings on 3 of its 30 devices, from after
                                the train part on (generated; groups `maintenance` and `fleet`:
                                does a false_positive stop the job's repeats, and only those?)
  --dataset network | network_subtle
                                the synthetic network scenarios (raw flow events, aggregate mode,
                                labelled attacks), generated into --out; the scenario brings its
                                mapping and tuned settings, --set adjusts them
  --events FILE [--labels FILE] a raw-event file (input.mode = "aggregate" in --config) with
                                labels per key and event-time range

Operator feedback: --feedback FILE applies feedback CloudEvents to the model before streaming
(the table's first line then says "with feedback", and "in-sample" when the feedback names alerts
of this same feed). --write-false-positives FILE plays the operator: it marks every model alert
episode the evaluation judged false, for a second run to replay with --model OUT/model.
--split-at SHARE keeps an honest figure: only episodes over before the cut are marked, and the
part after it is scored on its own (held out).
"""

EVALUATE_EPILOG = """\
examples:
  stream-detector evaluate --dataset smap_msl --out reports/smap_msl
  stream-detector evaluate --dataset skab --out reports/skab
  stream-detector evaluate --dataset westermo --side right --out reports/westermo_right
  stream-detector evaluate --dataset network --out reports/network --no-plots
  stream-detector evaluate --dataset network_subtle --set threshold.sensitivity=4
  stream-detector evaluate --events flows.jsonl --labels flows.labels.json --config flows.toml

precision before and after operator feedback (the same model both times):
  stream-detector evaluate --dataset maintenance --out reports/fp0 --split-at 0.5 \\
      --write-false-positives reports/fp0/false_positives.jsonl
  stream-detector evaluate --dataset maintenance --out reports/fp1 --split-at 0.5 \\
      --model reports/fp0/model --feedback reports/fp0/false_positives.jsonl

feedback file (--feedback): JSONL, one feedback CloudEvent a line, applied in file order, as
`stream-detector feedback --out FILE` and --write-false-positives write it; a bad line stops the
run with its line number. A false_positive only moves the threshold of the model version that
raised its alert: replay it with --model of the run that wrote it.

labels file (--labels; default: FILE.labels.json beside --events), as `stream-detector generate`
and the network scenarios write it: a JSON array of ranges, event times in epoch seconds,
both ends inclusive; kind is optional and names the report group of the key:
  [{"key": "10.0.0.7", "kind": "port_scan", "start_ts": 1700003600.0, "end_ts": 1700003720.999}]
A bucket is labelled anomalous when its span overlaps a range of its key.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `evaluate` command's own flags (the CLI adds --config/--set)."""
    parser.description = EVALUATE_DESCRIPTION
    parser.epilog = EVALUATE_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--dataset",
        help=f"smap_msl (the default without --events), skab or {WESTERMO} (looked up under "
        f"./data or the checkout's shared/data), {MIXED_SCALE}, {MAINTENANCE} or "
        f"{' or '.join(sorted(SCENARIOS))} (generated), a "
        "SMAP/MSL- or SKAB-style directory, or a CSV/JSONL file with input.label_field",
    )
    parser.add_argument(
        "--events",
        type=Path,
        metavar="FILE",
        help="a raw-event JSONL/CSV (.gz ok) to bucket with the [input]/[aggregate] mapping of "
        "--config (input.mode = 'aggregate')",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="with --events: the labelled ranges (default FILE.labels.json beside --events)",
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default reports/<dataset name>)"
    )
    parser.add_argument("--model", type=Path, help="evaluate this artefact instead of training")
    parser.add_argument("--spacecraft", action="append", help="SMAP or MSL (repeatable)")
    parser.add_argument(
        "--side",
        metavar="SIDE",
        help="with --dataset westermo: the recording point, a flows_SIDE.csv.gz beside the "
        f"injection log ({DEFAULT_SIDE}, the default, or right; the published set's bottom "
        "once its file is added there)",
    )
    parser.add_argument("--channels", help="comma-separated channel ids, for a quick look")
    parser.add_argument(
        "--train-fraction",
        type=float,
        help="files and scenarios: each key's leading share of events (buckets) used as its train "
        f"part (default 0.5; {SCENARIO_TRAIN_FRACTION} for the network scenarios, whose attacks "
        "start after that)",
    )
    parser.add_argument("--batch-size", type=int, default=2048, help="events per engine batch")
    parser.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help="comma-separated baselines to run beside the model ('' for none)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the per-key PNGs")
    parser.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="N,N,...",
        help="train one model per training seed (e.g. 0,1,2) and report each seed's figures, "
        "their mean and range (seeds.txt, seeds.json; each seed's own run in OUT/seed-N): the "
        "seed alone moves the figures, so compare settings by this spread, not by one draw",
    )
    parser.add_argument(
        "--feedback",
        type=Path,
        metavar="FILE",
        help="JSONL of operator-feedback CloudEvents applied to the model, in file order, before "
        "streaming; the report's figures are then 'with feedback'",
    )
    parser.add_argument(
        "--write-false-positives",
        type=Path,
        metavar="FILE",
        help="after the run, write a false_positive event (JSONL) for every model alert episode "
        "judged false and resolved (with --split-at: resolved before the cut), for --feedback "
        "FILE with --model OUT/model",
    )
    parser.add_argument(
        "--split-at",
        type=float,
        metavar="SHARE",
        help="cut the test part at this share (0..1) of its event time: "
        "--write-false-positives marks episodes over before the cut only, and the report adds "
        "the figures after it (held out from such feedback)",
    )


def _seed_list(text: str) -> tuple[int, ...]:
    """`--seeds 0,1,2`: two or more distinct non-negative integers."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2; got {text!r}") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(
            f"expected two or more distinct seeds >= 0, like 0,1,2; got {text!r} "
            "(one seed is --set train.seed=N)"
        )
    return seeds


def evaluation_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """Settings the chosen data brings (nested like --set, which goes on top): a network
    scenario's feed mapping and tuned sections, SKAB's sensor columns, nothing for other data.

    Also refuses flag combinations that cannot mean anything, before any work starts.
    """
    if args.events is not None and args.dataset is not None:
        raise ConfigError("pass either --dataset or --events FILE, not both")
    if args.labels is not None and args.events is None:
        raise ConfigError("--labels goes with --events FILE (a raw-event file)")
    if args.dataset in SCENARIOS:
        if args.config is not None:
            raise ConfigError(
                f"--dataset {args.dataset} brings its own mapping and evaluation settings; "
                "adjust them with --set section.field=value instead of --config"
            )
        return scenario_sections(args.dataset)
    if args.dataset == WESTERMO:
        if args.config is not None:
            raise ConfigError(
                "--dataset westermo brings its flow mapping (key = source address, 10 s buckets); "
                "adjust it with --set section.field=value instead of --config"
            )
        return westermo_sections()
    if args.side is not None:
        raise ConfigError("--side picks a Westermo recording point: use it with --dataset westermo")
    if args.dataset == MIXED_SCALE:
        return mixed_scale_sections()
    if args.dataset == MAINTENANCE:
        return maintenance_sections()
    if args.dataset is not None and _is_skab_name(args.dataset):
        # The experiments' sensors are the features; everything else stays as configured.
        return {"input": {"value_fields": list(SKAB_FEATURES)}}
    return {}


def _is_skab_name(dataset: str) -> bool:
    try:
        return is_skab(resolve_dataset(dataset))
    except FileNotFoundError:
        return False


def _load_from_args(args: argparse.Namespace, settings: Settings) -> LabelledDataset:
    """The dataset the flags name; a scenario is generated into the output directory."""
    fraction = args.train_fraction
    default_fraction = SCENARIO_TRAIN_FRACTION if args.dataset in SCENARIOS else 0.5
    fraction = default_fraction if fraction is None else fraction
    if args.events is not None:
        if settings.input.mode != "aggregate":
            raise ValueError(
                "--events takes raw events (flows, requests): give a --config with "
                "input.mode = 'aggregate' and an [aggregate] section (see examples/detector.toml); "
                "for a file of per-event values with a 0/1 label column use --dataset FILE"
            )
        if not args.events.exists():
            raise ValueError(f"--events {args.events} does not exist")
        labels = args.labels or labels_path_for(args.events)
        return load_raw_event_file(args.events, settings, fraction, labels)
    if args.dataset in SCENARIOS:
        data_dir = args.out or Path("reports") / args.dataset
        return load_scenario(args.dataset, data_dir, settings, fraction)
    if args.dataset == MIXED_SCALE:
        return load_mixed_scale()
    if args.dataset == MAINTENANCE:
        return load_maintenance()
    if args.dataset == WESTERMO:
        return load_westermo(resolve_dataset(WESTERMO), args.side or DEFAULT_SIDE, settings)
    if settings.input.mode == "aggregate":
        raise ValueError(
            "input.mode = 'aggregate' reads raw events: pass the file with --events FILE "
            "--labels FILE.labels.json"
        )
    channels = [c for c in (args.channels or "").split(",") if c] or None
    return load_dataset(
        args.dataset or "smap_msl",
        settings,
        spacecraft=args.spacecraft,
        channels=channels,
        train_fraction=fraction,
    )


def _feedback_from_args(args: argparse.Namespace, settings: Settings) -> list[FeedbackEvent] | None:
    """The events of --feedback FILE, or None without it; a bad file is the user's to fix."""
    if args.feedback is None:
        return None
    try:
        return read_feedback_file(args.feedback, settings.feedback)
    except OSError as exc:
        raise ConfigError(f"cannot read --feedback {args.feedback}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"--feedback {args.feedback}, {exc}") from None


# Flags that name or feed one model, refused with --seeds.
_ONE_MODEL_FLAGS = ("--model", "--feedback", "--write-false-positives")


def main_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    """Run `evaluate` from parsed CLI arguments; prints the table, returns the exit status."""
    # Flags and the feedback file before the slow part, so a typo fails at once.
    if args.split_at is not None and not 0.0 < args.split_at < 1.0:
        raise ConfigError(f"--split-at is a share of the test part, in (0, 1); got {args.split_at}")
    if args.seeds is not None:
        given = [flag for flag in _ONE_MODEL_FLAGS if getattr(args, flag[2:].replace("-", "_"))]
        if given:
            raise ConfigError(
                f"--seeds trains one model per seed and cannot take {', '.join(given)}, which "
                "go with a single model: run it without --seeds"
            )
    feedback = _feedback_from_args(args, settings)
    try:
        dataset = _load_from_args(args, settings)
    except (OSError, ValueError) as exc:  # a wrong path or mapping: the user's to fix
        source = args.events or args.dataset or "smap_msl"
        raise ConfigError(f"cannot load {source}: {exc}") from None
    out_dir = args.out or Path("reports") / dataset.name
    runs: dict[str, Any] = {
        "baselines": [b for b in args.baselines.split(",") if b],
        "batch_size": args.batch_size,
        "plots": not args.no_plots,
        "split": args.split_at,
    }
    if args.seeds is not None:
        return _evaluate_seeds(settings, dataset, out_dir, args.seeds, runs)
    artefact = load_artefact(args.model, settings) if args.model else None
    report = run_evaluation(
        settings,
        dataset,
        out_dir,
        artefact=artefact,
        feedback=feedback,
        write_false_positives=args.write_false_positives,
        **runs,
    )
    print(format_table(report))
    for note in report["notes"]:
        if "skipped" in note:
            print(f"note: {note}")
    print(f"report: {out_dir / 'report.json'}")
    return 0


def _evaluate_seeds(
    settings: Settings,
    dataset: LabelledDataset,
    out_dir: Path,
    seeds: Sequence[int],
    runs: dict[str, Any],
) -> int:
    """`evaluate --seeds`: one full run per training seed into OUT/seed-N, then the summary
    of their headline figures (seeds.json, seeds.txt), printed."""
    reports = {}
    for done, seed in enumerate(seeds):
        log.info("evaluate seed", seed=seed, done=done, of=len(seeds))
        seeded = settings.model_copy(
            update={"train": settings.train.model_copy(update={"seed": seed})}
        )
        reports[seed] = run_evaluation(seeded, dataset, out_dir / f"seed-{seed}", **runs)
    summary = seed_summary(reports)
    table = format_seed_table(summary)
    (out_dir / "seeds.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out_dir / "seeds.txt").write_text(table + "\n")
    print(table)
    print(f"summary: {out_dir / 'seeds.txt'}; each seed's report: {out_dir}/seed-N/report.json")
    return 0
