"""A feed with a recurring benign job: does a false_positive on it stop its repeats, and only those?

Real feeds have benign events that come back on a schedule (a nightly backup, a maintenance job, a
cron burst): the model alerts on each run, and an operator marks the first as a false positive
expecting the repeats to stay quiet while other keys and other anomalies still alert. The demo's
telemetry has no such event, so this dataset adds one to the demo's generator (its device
profiles, sensors, anomaly kinds and labels; 30 devices at twice the demo's anomaly rate, so each
kind has about 16 anomalies and a run takes minutes): on three devices a maintenance job
(scenarios/telemetry.py, `MaintenanceJob`) runs every 200 readings, 24 readings of the same shape
each time, labelled normal. Like mixed_scale it brings the feed's mapping and nothing else: the
detector runs at its defaults.

The job starts after the train part and never runs inside it: it is the new job that started
after the model was trained, which is why it alerts at all (a job the model had been fitted on
would be reconstructed like any other normal pattern, and there would be nothing to mark). Its
first run is 100 readings into the test part and it runs 12 times per device there, six on either
side of the middle, so `--split-at 0.5` has the operator see six runs per device and holds out six.

The devices running the job are the report's group `maintenance`, the others `fleet`: precision
there is the figure feedback should raise, and recall in `fleet` (other keys) and in
`maintenance` (other anomalies of the marked keys) the figures it must keep.
"""

from __future__ import annotations

from typing import Any, Final

import structlog

from stream_detector.evaluation.datasets import Channel, LabelledDataset
from stream_detector.scenarios.telemetry import (
    GeneratorConfig,
    MaintenanceJob,
    TelemetryGenerator,
    mapping_for,
)

log = structlog.get_logger(__name__)

MAINTENANCE: Final = "maintenance"
MAINTENANCE_GROUP: Final = "maintenance"
FLEET_GROUP: Final = "fleet"
TRAIN_TICKS: Final = 600  # one generator day, anomaly- and job-free
TEST_TICKS: Final = 2400
# Every 200 readings is every 8 hours of the generator's 600-reading day; the period divides the
# day, so each device's runs meet the same phase of its cycle and differ by noise alone. A run's
# episode needs episodes.cooldown (16 windows of 8 readings) after it to resolve, so runs much
# closer would merge into one episode and give the operator nothing to mark before the next.
JOB: Final = MaintenanceJob(devices=(4, 13, 22), every=200, first=TRAIN_TICKS + 100, length=24)
FEED: Final = GeneratorConfig(
    devices=30, seed=5, warmup_s=TRAIN_TICKS * 1.0, anomaly_rate=1.0, maintenance=JOB
)


def maintenance_sections() -> dict[str, dict[str, Any]]:
    """The mapping of the generated feed (nested like --set); everything else stays default."""
    return {"input": mapping_for(FEED)}


def generate_maintenance() -> tuple[LabelledDataset, TelemetryGenerator]:
    """The dataset, and the generator that made it (its anomalies and maintenance runs)."""
    generator = TelemetryGenerator(FEED)
    keys_tick, ts_tick, values_tick, labels_tick = generator.labelled_ticks(
        TRAIN_TICKS + TEST_TICKS
    )
    cut = TRAIN_TICKS
    channels = []
    for device in range(FEED.devices):
        group = MAINTENANCE_GROUP if device in JOB.devices else FLEET_GROUP
        device_ts, device_values = ts_tick[:, device], values_tick[:, device, :]
        labels = labels_tick[:, device]
        channels.append(
            Channel(str(keys_tick[0, device]), group,
                    device_ts[:cut], device_values[:cut], labels[:cut],
                    device_ts[cut:], device_values[cut:], labels[cut:])
        )  # fmt: skip
    dataset = LabelledDataset(
        MAINTENANCE, tuple(mapping_for(FEED)["value_fields"]), tuple(channels), _notes(generator)
    )
    log.info("dataset generated", dataset=MAINTENANCE, keys=len(channels))
    return dataset, generator


def load_maintenance() -> LabelledDataset:
    """Generate the feed (deterministic): per device, its first day is the train part, the next
    four days (anomalies and, on three devices, the maintenance job) the test part."""
    return generate_maintenance()[0]


def _notes(generator: TelemetryGenerator) -> tuple[str, ...]:
    kinds = sorted({a.kind for a in generator.anomalies})
    job_keys = sorted({run.key for run in generator.maintenance_runs})
    return (
        f"{MAINTENANCE}: the demo's telemetry generator, {FEED.devices} devices x "
        f"{len(FEED.sensors)} sensors, seed {FEED.seed}, anomaly rate {FEED.anomaly_rate:g} a "
        f"device a day. Train part: the first {TRAIN_TICKS} readings of each device (one "
        f"generated day, no anomaly, no job); test part: the next {TEST_TICKS}, with "
        f"{len(generator.anomalies)} injected anomalies ({', '.join(kinds)}).",
        f"A maintenance job, labelled normal, runs on {', '.join(job_keys)} (group "
        f"`{MAINTENANCE_GROUP}`; the others are `{FLEET_GROUP}`): every {JOB.every} readings "
        f"from the test part's reading {JOB.first - TRAIN_TICKS} on, {JOB.length} readings of "
        f"vibration +{JOB.vibration:g} and a temperature bump of +{JOB.temperature:g} amplitude "
        f"units, the same each time; {len(generator.maintenance_runs)} runs in all. It started "
        "after the train part, so the model has never seen it.",
    )
