"""The demo's bundled model: how it is trained, reproducibly, and checked.

Training an LSTM autoencoder takes minutes on a laptop CPU, longer than a newcomer should wait
before seeing anything, so the demo ships a small artefact in `demo/model/` by default. This module
regenerates it (`python -m stream_detector.demo.bundled`, or scripts/train-demo-model.sh):
the same generator as the demo with another seed and no anomalies, on the CPU with a fixed seed,
so the same code gives the same weights (and so the same model_version). Afterwards it scores the
new model on the demo's own feed in-process and prints the precision and recall the live demo
should roughly reproduce.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

import orjson

from stream_detector.artefact import ModelArtefact
from stream_detector.demo.scenario import (
    BUNDLED_MODEL_DIR,
    TRAINING_SEED,
    WARMUP_TICKS,
    demo_settings,
    generator_config,
)
from stream_detector.demo.training import score_offline, train_from_feed
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream_detector.demo.bundled",
        description="Retrain the demo's bundled model and check it on the demo feed.",
    )
    parser.add_argument("--out", type=Path, default=BUNDLED_MODEL_DIR, help="artefact directory")
    parser.add_argument("--check-only", action="store_true", help="only score the existing model")
    args = parser.parse_args(argv)
    configure_logging("info")

    from stream_detector.artefact import load_artefact

    feed = generator_config()
    settings = demo_settings(feed, {"model": {"device": "cpu"}})
    artefact = load_artefact(args.out, settings) if args.check_only else train_bundled(args.out)
    score = score_offline(feed, WARMUP_TICKS + CHECK_TICKS, settings, artefact)
    report = {"model_version": artefact.metadata.model_version, **score.as_dict()}
    print(orjson.dumps(report).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
