"""The demo's bundled models: how they are trained, reproducibly, and checked.

Training an LSTM autoencoder takes minutes on a laptop CPU, longer than a newcomer should wait
before seeing anything, so the demo ships a small artefact per scenario: `demo/model/` (IoT) and
`demo/network_model/` (network flows). This module regenerates them
(`python -m stream_detector.demo.bundled [--scenario network]`, or scripts/train-demo-model.sh):
the same generator as the demo with another seed and no anomalies, on the CPU with a fixed seed,
so the same code gives the same weights (and so the same model_version) on one machine; another
CPU or thread count rounds differently and may train another version (docs/detection.md), which
is why the check below prints what the new one finds. Afterwards it scores the new model on the
demo's own feed in-process and prints the precision and recall the live demo should roughly
reproduce.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

import orjson

from stream_detector.demo.network_scenario import (
    NETWORK_MODEL_DIR,
    network_feed_config,
    network_settings,
    score_flows_offline,
    train_on_flows,
    training_feed,
)
from stream_detector.demo.offline import score_offline, train_from_feed
from stream_detector.demo.scenario import (
    BUNDLED_MODEL_DIR,
    TRAINING_SEED,
    WARMUP_TICKS,
    demo_settings,
    generator_config,
)
from stream_detector.demo.scoreboard import Score
from stream_detector.detector.artefact import ModelArtefact
from stream_detector.logs import configure_logging

# One full daily cycle of every device, so the model has seen each phase of it.
TRAINING_TICKS: Final = 600
TRAINING_DEVICES: Final = 200
# Live readings per device in the offline check: about a one-minute demo at the default rate.
CHECK_TICKS: Final = 600


def train_bundled(out_dir: Path = BUNDLED_MODEL_DIR) -> ModelArtefact:
    """Train the bundled model into `out_dir` (CPU, fixed seeds: reproducible)."""
    feed = replace(generator_config(TRAINING_DEVICES, TRAINING_SEED), anomaly_rate=0.0)
    settings = demo_settings(feed, {"model": {"device": "cpu"}})
    return train_from_feed(feed, TRAINING_TICKS, settings, out_dir)


def train_bundled_network(out_dir: Path = NETWORK_MODEL_DIR) -> ModelArtefact:
    """Train the network demo's bundled model into `out_dir` (CPU, fixed seeds: reproducible)."""
    feed = training_feed()
    settings = network_settings(feed, {"model": {"device": "cpu"}})
    return train_on_flows(feed, feed.duration_s, settings, out_dir)


def _check(
    scenario: str, out: Path, check_only: bool, seed: int | None
) -> tuple[ModelArtefact, Score]:
    """Train (unless `check_only`) and score the model on the demo feed of `seed` (None: the
    live demo's own feed)."""
    from stream_detector.detector.artefact import load_artefact

    cpu = {"model": {"device": "cpu"}}
    if scenario == "network":
        flows = network_feed_config() if seed is None else network_feed_config(seed=seed)
        settings = network_settings(flows, cpu)
        artefact = load_artefact(out, settings) if check_only else train_bundled_network(out)
        return artefact, score_flows_offline(flows, settings, artefact)
    feed = generator_config() if seed is None else generator_config(seed=seed)
    settings = demo_settings(feed, cpu)
    artefact = load_artefact(out, settings) if check_only else train_bundled(out)
    return artefact, score_offline(feed, WARMUP_TICKS + CHECK_TICKS, settings, artefact)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream_detector.demo.bundled",
        description="Retrain a demo scenario's bundled model and check it on the demo feed.",
    )
    parser.add_argument("--scenario", choices=["iot", "network"], default="iot")
    parser.add_argument(
        "--out", type=Path, help="artefact directory (default: the scenario's bundled one)"
    )
    parser.add_argument("--check-only", action="store_true", help="only score the existing model")
    parser.add_argument(
        "--seed",
        type=int,
        help="check on the demo feed of this seed instead of the live demo's own (other seeds "
        "place other anomalies on other devices: the spread of the figures)",
    )
    args = parser.parse_args(argv)
    configure_logging("info")

    default_dir = NETWORK_MODEL_DIR if args.scenario == "network" else BUNDLED_MODEL_DIR
    artefact, score = _check(args.scenario, args.out or default_dir, args.check_only, args.seed)
    report = {"model_version": artefact.metadata.model_version, **score.as_dict()}
    print(orjson.dumps(report).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
