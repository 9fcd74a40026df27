"""The feed's notion of how far the detector has seen, checked against the generator's clock."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.demo.feed import feed_horizon
from stream_detector.scenarios.telemetry import GeneratorConfig, TelemetryGenerator


@settings(max_examples=30, deadline=None)
@given(
    devices=st.integers(1, 7),
    period_s=st.sampled_from([0.5, 1.0, 2.0]),
    events=st.integers(0, 60),
)
def test_horizon_splits_seen_readings_from_unseen(
    devices: int, period_s: float, events: int
) -> None:
    config = GeneratorConfig(devices=devices, period_s=period_s, seed=3)
    generator = TelemetryGenerator(config)
    n_ticks = events // devices + 2
    ts = np.concatenate([tick[1] for tick in generator.ticks(n_ticks)])  # emission order
    horizon = feed_horizon(config, events)
    complete = (events // devices) * devices
    # Every reading of a complete tick lies before the horizon, every later one at or after it.
    assert np.all(ts[:complete] < horizon)
    assert np.all(ts[complete:] >= horizon)
