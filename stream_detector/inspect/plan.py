"""Every choice for a draft config, worked out from a sample, each with its reason."""

from __future__ import annotations

import math
from dataclasses import dataclass

from stream_detector.inspect.feeds import matching_preset
from stream_detector.inspect.flows import FlowShape, flow_shape
from stream_detector.inspect.keys import KeyChoice, choose_key
from stream_detector.inspect.kinds import TypeFilter, type_filter
from stream_detector.inspect.profile import profile_records
from stream_detector.inspect.sample import Sample, SampleError
from stream_detector.inspect.timing import TimeChoice, choose_time
from stream_detector.inspect.values import Verdict, choose_label, choose_values


@dataclass(frozen=True)
class Plan:
    """What `render` writes: the sample, the key, the time, the features and the mode."""

    sample: Sample
    fields: int
    key: KeyChoice
    time: TimeChoice
    values: list[Verdict]
    shape: FlowShape
    preset: tuple[str, str] | None
    kind: TypeFilter | None
    label: str | None  # a 0/1 anomaly label column, for evaluate

    @property
    def value_paths(self) -> list[str]:
        return [v.path for v in self.values if v.taken]

    @property
    def lateness_s(self) -> float:
        """The bucket lateness: the worst seen, with half again for margin, in whole 10 s."""
        return max(10.0, 10.0 * math.ceil(1.5 * self.shape.lateness_s / 10.0))


def plan_for(sample: Sample) -> Plan:
    """The draft's choices; SampleError when nothing in the sample can be a feature."""
    profiles = profile_records(sample.records)
    preset = matching_preset(set(profiles))
    kind = type_filter(sample.records, profiles)
    if kind is not None:  # the mapping is worked out on the kept type's records only
        kept = [r for r in sample.records if r.get(kind.path) == kind.value]
        profiles = profile_records(kept)
    fields = list(profiles.values())
    from_topic = sample.kind == "kafka"
    time = choose_time(fields, broker_times=from_topic)
    key = choose_key(fields, time.path, message_keys=from_topic)
    label = choose_label(fields)
    exclude = {*key.paths, *([time.path] if time.path else []), *([label] if label else [])}
    values = choose_values(fields, exclude)
    shape = flow_shape(fields, key.paths, key.per_record, time.seconds)
    if not shape.aggregate and not any(v.taken for v in values):
        skipped = "; ".join(f"{v.path}: {v.why}" for v in values) or "no numeric field at all"
        raise SampleError(
            f"no field in {sample.source} is a numeric reading in 90% of the records "
            f"({skipped}); the detector needs at least one"
        )
    return Plan(sample, len(fields), key, time, values, shape, preset, kind, label)
