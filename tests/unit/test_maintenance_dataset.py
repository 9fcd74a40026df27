"""The maintenance dataset: a benign job, labelled normal, repeating on its devices only, after the
train part; compared with the same feed generated without the job, which differs in nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

import numpy as np
import pytest

from stream_detector.evaluation.datasets import LabelledDataset
from stream_detector.evaluation.maintenance import (
    FEED,
    JOB,
    MAINTENANCE_GROUP,
    TRAIN_TICKS,
    generate_maintenance,
)
from stream_detector.scenarios.telemetry import GeneratorConfig, MaintenanceJob, TelemetryGenerator

# The dataset, its generator, the generator of the same feed without the job, and that feed's
# values [ticks, devices, sensors].
Generated: TypeAlias = tuple[LabelledDataset, TelemetryGenerator, TelemetryGenerator, np.ndarray]


@pytest.fixture(scope="module")
def generated() -> Generated:
    dataset, generator = generate_maintenance()
    without = TelemetryGenerator(dataclasses.replace(FEED, maintenance=None))
    ticks = len(dataset.channels[0].train_ts) + len(dataset.channels[0].test_ts)
    values = np.stack([v for _, _, v in without.ticks(ticks)])  # [ticks, devices, sensors]
    return dataset, generator, without, values


def test_job_repeats_at_its_period_on_its_devices_after_the_train(generated: Generated) -> None:
    dataset, generator, _, _ = generated
    runs = generator.maintenance_runs
    keys = {dataset.channels[d].key for d in JOB.devices}
    assert {run.key for run in runs} == keys
    assert {c.key for c in dataset.channels if c.group == MAINTENANCE_GROUP} == keys
    train_end = max(float(c.train_ts[-1]) for c in dataset.channels)
    for key in keys:
        starts = np.array([run.start_ts for run in runs if run.key == key])
        assert starts[0] > train_end  # the model never trained on it
        assert np.allclose(np.diff(starts), JOB.every * FEED.period_s)
        assert len(starts) >= 10  # many repeats on both sides of the test part's middle


def test_job_is_labelled_normal_and_changes_its_devices_runs_only(generated: Generated) -> None:
    dataset, generator, without, values = generated
    assert len(generator.anomalies) == len(without.anomalies) > 0
    for device, channel in enumerate(dataset.channels):
        ts = np.concatenate([channel.train_ts, channel.test_ts])
        labels = np.concatenate([channel.train_labels, channel.test_labels])
        # The labels are those of the anomalies alone: the job adds none.
        assert np.array_equal(labels, without.label(np.full(len(ts), channel.key), ts))
        mine = np.concatenate([channel.train_values, channel.test_values])
        changed = np.flatnonzero((mine != values[:, device]).any(axis=1))  # ticks
        if device not in JOB.devices:
            assert len(changed) == 0
            continue
        assert changed.min() >= TRAIN_TICKS
        assert all(JOB.step(int(tick)) is not None for tick in changed)
        assert len(changed) == len(generator.maintenance_runs) // len(JOB.devices) * JOB.length


def test_a_job_on_a_device_the_feed_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="maintenance.devices"):
        GeneratorConfig(devices=3, maintenance=MaintenanceJob(devices=(3,)))
