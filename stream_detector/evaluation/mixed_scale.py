"""A feed whose keys span ten decades of scale: does detection hold for every one of them?

The demo's telemetry generator (daily cycles, noise, six kinds of injected anomaly) for a few
devices, and each device's readings fed eleven times, multiplied by 10^e for e = -3 .. 7 (key
`device-0003@1e+5`): every decade holds exactly the same devices and anomalies, only the scale
differs. One model serves them all, as in a metrics feed that mixes percentages with byte
counts. The decades are the report's groups, so any difference between their rows is the
detector treating scales differently; one that treats keys of any scale alike shows the same
figures in every row.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import structlog

from stream_detector.evaluation.datasets import Channel, LabelledDataset
from stream_detector.scenarios.telemetry import GeneratorConfig, TelemetryGenerator, mapping_for

log = structlog.get_logger(__name__)

MIXED_SCALE: Final = "mixed_scale"
DECADES: Final = tuple(range(-3, 8))
_TRAIN_TICKS: Final = 600  # one generator day, anomaly-free
_TEST_TICKS: Final = 1200
_FEED: Final = GeneratorConfig(devices=10, seed=3, warmup_s=_TRAIN_TICKS * 1.0, anomaly_rate=1.5)


def mixed_scale_sections() -> dict[str, dict[str, Any]]:
    """The mapping of the generated feed (nested like --set); everything else stays default."""
    return {"input": mapping_for(_FEED)}


def load_mixed_scale() -> LabelledDataset:
    """Generate the feed (deterministic) as one key per device: its first day is the train part,
    the next two days (with anomalies) the test part."""
    generator = TelemetryGenerator(_FEED)
    # Labels belong to a device and its times, the same in every decade: computed once each.
    ticks = generator.labelled_ticks(_TRAIN_TICKS + _TEST_TICKS)
    keys_tick, ts_tick, values_tick, labels_tick = ticks
    cut = _TRAIN_TICKS
    channels = []
    for decade in DECADES:
        for device in range(_FEED.devices):
            key = str(keys_tick[0, device])
            device_ts, labels = ts_tick[:, device], labels_tick[:, device]
            device_values = (values_tick[:, device, :] * 10.0**decade).astype(np.float32)
            channels.append(
                Channel(f"{key}@1e{decade:+d}", f"1e{decade:+d}",
                        device_ts[:cut], device_values[:cut], labels[:cut],
                        device_ts[cut:], device_values[cut:], labels[cut:])
            )  # fmt: skip
    kinds = sorted({a.kind for a in generator.anomalies})
    notes = (
        f"{MIXED_SCALE}: the demo's telemetry generator, {_FEED.devices} devices x "
        f"{len(_FEED.sensors)} sensors, seed {_FEED.seed}, each device fed once per decade "
        f"e = {DECADES[0]} .. {DECADES[-1]} with its readings times 10^e (key `device@1e+e`); "
        "groups are the decades. Train part: "
        f"the first {_TRAIN_TICKS} readings of each device (one generated day, anomaly-free); "
        f"test part: the next {_TEST_TICKS}, with {len(generator.anomalies)} injected "
        f"anomalies ({', '.join(kinds)}) in every decade.",
    )
    log.info("dataset generated", dataset=MIXED_SCALE, keys=len(channels))
    return LabelledDataset(MIXED_SCALE, tuple(mapping_for(_FEED)["value_fields"]), tuple(channels), notes)
