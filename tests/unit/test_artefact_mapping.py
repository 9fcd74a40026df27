"""The artefact records the input mapping it was trained with; loading for serving fills in what
the configuration leaves out, and refuses what it contradicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from stream_detector.config import Settings
from stream_detector.detector.artefact import (
    METADATA_FILE,
    ArtefactError,
    TrainingResult,
    load_artefact,
    load_artefact_and_settings,
    save_artefact,
)
from stream_detector.detector.facade import load_detector
from stream_detector.engine.model import LSTMAutoencoder

CPU = torch.device("cpu")
# The architecture is given every time; only the mapping is left to the artefact.
SHAPE: dict[str, Any] = {
    "window": {"size": 8},
    "model": {"hidden_size": 8, "num_layers": 1, "latent_size": 4, "device": "cpu"},
}
MAPPING: dict[str, Any] = {
    "key_field": "device",
    "timestamp_field": "t",
    "timestamp_unit": "ms",
    "value_fields": ("a", "b"),
    "filter": {"kind": "reading", "ok": True},
}
AGGREGATE: dict[str, Any] = {
    "input": {"mode": "aggregate", "key_fields": ("host", "cpu"), "value_fields": ("n", "top")},
    "aggregate": {
        "bucket_width_s": 5.0,
        "features": [{"name": "n", "agg": "count"}, {"name": "top", "agg": "max", "field": "x"}],
    },
}


def _save(directory: Path, **sections: Any) -> Path:
    settings = Settings(**SHAPE, **sections)
    n = len(settings.input.value_fields)
    torch.manual_seed(0)
    model = LSTMAutoencoder(n, 8, 8, 1, 4)
    result = TrainingResult((0.0,) * n, (1.0,) * n, {"0.995": 1.0}, 1.0, {})
    save_artefact(directory, model, settings, result)
    return directory


@pytest.fixture()
def trained(tmp_path: Path) -> Path:
    return _save(tmp_path / "model", input=MAPPING)


def _edit(directory: Path, **changes: Any) -> None:
    path = directory / METADATA_FILE
    path.write_bytes(orjson.dumps({**orjson.loads(path.read_bytes()), **changes}))


def test_the_mapping_round_trips(trained: Path) -> None:
    mapping = load_artefact(trained, Settings(**SHAPE, input=MAPPING), CPU).metadata.input_mapping
    assert mapping == {
        "input.mode": "events",
        "input.key_field": "device",
        "input.timestamp_field": "t",
        "input.timestamp_unit": "ms",
        "input.value_fields": ["a", "b"],
        "input.filter": {"kind": "reading", "ok": True},
    }


def test_an_aggregate_mapping_records_the_buckets_and_one_key_form(tmp_path: Path) -> None:
    directory = _save(tmp_path / "agg", **AGGREGATE)
    mapping = load_artefact(directory, Settings(**SHAPE, **AGGREGATE), CPU).metadata.input_mapping
    assert mapping is not None
    assert mapping["input.key_fields"] == ["host", "cpu"] and "input.key_field" not in mapping
    assert mapping["aggregate.bucket_width_s"] == 5.0
    assert mapping["aggregate.features"][1] == {"name": "top", "agg": "max", "field": "x"}
    assert "aggregate.late_policy" not in mapping
    _, settings = load_artefact_and_settings(directory, Settings(**SHAPE), CPU)
    assert settings.input.mode == "aggregate" and settings.input.key_fields == ("host", "cpu")
    assert settings.aggregate == Settings(**SHAPE, **AGGREGATE).aggregate


def test_what_the_configuration_leaves_out_is_taken_from_the_artefact(trained: Path) -> None:
    given = Settings(**SHAPE, input={"timestamp_unit": "ms", "label_field": "y"})
    _, settings = load_artefact_and_settings(trained, given, CPU)
    assert settings.input.key_field == "device" and settings.input.timestamp_field == "t"
    assert settings.input.value_fields == ("a", "b")
    assert settings.input.filter == {"kind": "reading", "ok": True}
    assert settings.input.label_field == "y"  # not a mapping setting: the configuration's
    detector = load_detector(Settings(**SHAPE), trained, CPU)
    assert detector.feature_names == ("a", "b")
    decoded = detector.decoder.decode_messages(
        [orjson.dumps({"device": "d1", "t": 1_714_564_800_000, "a": 1, "b": 2, "kind": "reading",
                       "ok": True})]
    )
    assert list(decoded.batch.keys) == ["d1"] and list(decoded.batch.ts) == [1_714_564_800.0]


def test_a_lowered_time_floor_is_recorded_and_taken(tmp_path: Path) -> None:
    """Step indices read as seconds need min_timestamp below its default, which the artefact
    records so that the same data replays without a config; at its default it is not recorded."""
    steps = {**MAPPING, "timestamp_unit": "s", "min_timestamp": 0}
    trained = _save(tmp_path / "steps", input=steps)
    mapping = load_artefact(trained, Settings(**SHAPE, input=steps), CPU).metadata.input_mapping
    assert mapping["input.min_timestamp"] == 0.0
    detector = load_detector(Settings(**SHAPE), trained, CPU)
    decoded = detector.decoder.decode_messages(
        [orjson.dumps({"device": "d1", "t": 7, "a": 1, "b": 2, "kind": "reading", "ok": True})]
    )
    assert list(decoded.batch.ts) == [7.0] and not decoded.rejects
    with pytest.raises(ArtefactError, match="input.min_timestamp"):
        load_artefact_and_settings(trained, Settings(**SHAPE, input={"min_timestamp": 10.0}), CPU)


@pytest.mark.parametrize(
    ("given", "setting", "in_artefact", "in_config"),
    [
        ({"key_field": "host"}, "input.key_field", "'device'", "'host'"),
        ({"key_fields": ("host", "cpu")}, "input.key_fields", "'unset'", "['host', 'cpu']"),
        ({"timestamp_field": "@broker_timestamp"}, "input.timestamp_field", "'t'", "None"),
        ({"timestamp_unit": "s"}, "input.timestamp_unit", "'ms'", "'s'"),
        ({"value_fields": ("b", "a")}, "input.value_fields", "['a', 'b']", "['b', 'a']"),
        ({"filter": {"kind": "reading", "ok": 1}}, "input.filter", "{'kind'", "{'kind'"),
        ({"mode": "aggregate", "value_fields": ("events",)}, "input.mode", "'events'", "'agg"),
    ],
)
def test_a_contradicting_setting_is_refused_naming_it_and_the_fix(
    trained: Path, given: dict[str, Any], setting: str, in_artefact: str, in_config: str
) -> None:
    with pytest.raises(ArtefactError) as info:
        load_artefact_and_settings(trained, Settings(**SHAPE, input=given), CPU)
    message = str(info.value)
    assert f" is {in_artefact}" in message and f"but {in_config}" in message, message
    assert f"remove {setting} from the configuration" in message and "retrain" in message


def test_other_aggregate_features_are_refused_with_the_fix(tmp_path: Path) -> None:
    directory = _save(tmp_path / "agg", **AGGREGATE)
    other = {"features": [{"name": "n", "agg": "count"}, {"name": "top", "agg": "min",
                                                          "field": "x"}]}
    settings = Settings(**SHAPE, input=AGGREGATE["input"], aggregate=other)
    with pytest.raises(ArtefactError, match="remove aggregate.features from the configuration"):
        load_artefact_and_settings(directory, settings, CPU)


def test_loading_as_given_checks_the_mapping_too(trained: Path) -> None:
    """A caller that scores with its own settings gets them checked, with the fix to match."""
    with pytest.raises(ArtefactError, match="set input.key_field = 'device' to match"):
        load_artefact(trained, Settings(**SHAPE, input={**MAPPING, "key_field": "host"}), CPU)


def test_an_artefact_without_a_stored_mapping_still_loads(trained: Path) -> None:
    data = orjson.loads((trained / METADATA_FILE).read_bytes())
    del data["input_mapping"], data["feature_error_means"], data["training_keys"]
    data["format_version"] = 2  # as written before the mapping was recorded
    (trained / METADATA_FILE).write_bytes(orjson.dumps(data))
    given = Settings(**SHAPE, input=MAPPING)
    artefact, settings = load_artefact_and_settings(trained, given, CPU)
    assert artefact.metadata.input_mapping is None and settings is given
    with pytest.raises(ArtefactError, match="input_mapping"):  # a format 3 one must have it
        _edit(trained, format_version=3)
        load_artefact(trained, given, CPU)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("not a mapping", "not an object"),
        ({"input.key_field": 3}, "input.key_field"),
        ({"input.timestamp_unit": "hours"}, "timestamp_unit"),
        ({"input.label_field": "y"}, "not input mapping settings"),
        ({"input.timestamp_field": None, "input.timestamp_unit": "minutes"}, "timestamp_unit"),
        ({"input.key_fields": ["host"]}, "key_fields"),
        ({"input.value_fields": ["a", "c"]}, "model was trained with"),
        ({"aggregate.bucket_width_s": 5.0}, "aggregate"),
        ({"input.filter": {"kind": ["a"]}}, "filter"),
    ],
)
def test_a_malformed_stored_mapping_is_refused(trained: Path, change: Any, why: str) -> None:
    data = orjson.loads((trained / METADATA_FILE).read_bytes())
    mapping = change if isinstance(change, str) else {**data["input_mapping"], **change}
    _edit(trained, input_mapping=mapping)
    with pytest.raises(ArtefactError, match="input_mapping") as info:
        load_artefact(trained, Settings(**SHAPE, input=MAPPING), CPU)
    assert why in str(info.value) and "edited or damaged" in str(info.value)


def test_a_missing_mapping_setting_is_refused(trained: Path) -> None:
    data = orjson.loads((trained / METADATA_FILE).read_bytes())
    del data["input_mapping"]["input.timestamp_field"]
    _edit(trained, input_mapping=data["input_mapping"])
    with pytest.raises(ArtefactError, match="input_mapping.*not as training writes it"):
        load_artefact(trained, Settings(**SHAPE, input=MAPPING), CPU)
