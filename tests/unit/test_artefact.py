"""Artefacts round-trip exactly, and any artefact that does not fit the configuration is refused."""

from __future__ import annotations

import math
import pickle
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from safetensors.torch import save_file

from stream_detector.config import Settings, fingerprint_of
from stream_detector.detector.artefact import (
    ARTEFACT_FORMAT,
    METADATA_FILE,
    WEIGHTS_FILE,
    ArtefactError,
    TrainingResult,
    create_artefact,
    load_artefact,
    model_version_of,
    save_artefact,
)
from stream_detector.engine.model import LSTMAutoencoder, WindowScorer

CPU = torch.device("cpu")
FEATURES = ("cpu", "latency")


def _settings(**sections: Any) -> Settings:
    base: dict[str, Any] = {
        "input": {"value_fields": FEATURES},
        "window": {"size": 8},
        "model": {"hidden_size": 8, "num_layers": 1, "latent_size": 4, "device": "cpu"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)


def _model(settings: Settings, seed: int = 0) -> LSTMAutoencoder:
    torch.manual_seed(seed)
    return LSTMAutoencoder(
        len(settings.input.value_fields),
        settings.window.size,
        settings.model.hidden_size,
        settings.model.num_layers,
        settings.model.latent_size,
    )


RESULT = TrainingResult(
    norm_mean=(1.0, 2.0),
    norm_std=(0.5, 3.0),
    calibration_quantiles={"0.5": 0.1, "0.9": 0.2, "0.995": 0.4},
    global_threshold=0.4,
    training={"epochs_run": 3, "best_epoch": 2, "val_loss": [0.3, 0.2, 0.25]},
    feature_error_means=(0.05, 0.15),
    training_keys=("pump-2", "pump-10", "pump-1"),
)


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    settings = _settings()
    directory = tmp_path / "artefact"
    save_artefact(directory, _model(settings), settings, RESULT)
    return directory


def _edit_metadata(directory: Path, *dropped: str, **changes: Any) -> None:
    """Rewrite the artefact's metadata.json without the `dropped` fields and with `changes`."""
    path = directory / METADATA_FILE
    data = orjson.loads(path.read_bytes())
    for field in dropped:
        del data[field]
    data.update(changes)
    path.write_bytes(orjson.dumps(data))


def test_round_trip_gives_identical_scores_and_metadata(tmp_path: Path) -> None:
    settings = _settings()
    model = _model(settings)
    saved = save_artefact(tmp_path / "a", model, settings, RESULT)
    loaded = load_artefact(tmp_path / "a", settings, CPU)

    assert loaded.metadata == saved.metadata
    windows = np.random.default_rng(0).normal(size=(9, 8, 2)).astype(np.float32)
    before = WindowScorer(model, CPU, 4).score(windows)
    after = WindowScorer(loaded.model, CPU, 4).score(windows)
    np.testing.assert_array_equal(after.scores, before.scores)
    np.testing.assert_array_equal(after.last_reconstruction, before.last_reconstruction)
    assert not loaded.model.training


def test_metadata_describes_the_model(saved: Path) -> None:
    settings = _settings()
    meta = load_artefact(saved, settings, CPU).metadata
    assert meta.format_version == ARTEFACT_FORMAT
    assert meta.features == FEATURES
    assert (meta.window, meta.hidden_size, meta.num_layers, meta.latent_size) == (8, 8, 1, 4)
    assert meta.config_fingerprint == settings.model_fingerprint()
    assert meta.model_settings == settings.model_settings()
    assert meta.model_settings["normalize.prior_weight"] == 0.0
    assert meta.model_settings["normalize.clip_sigma"] == 4.0
    assert meta.norm_mean == (1.0, 2.0) and meta.norm_std == (0.5, 3.0)
    assert meta.global_threshold == 0.4
    assert meta.training["val_loss"] == [0.3, 0.2, 0.25]
    assert meta.feature_error_means == (0.05, 0.15)
    assert meta.training_keys == ("pump-1", "pump-10", "pump-2")
    assert meta.model_version == model_version_of((saved / WEIGHTS_FILE).read_bytes())
    assert meta.model_version.startswith("lstm-ae-") and len(meta.model_version) == 8 + 12


def test_version_depends_only_on_the_weights(tmp_path: Path) -> None:
    settings = _settings()
    in_memory = create_artefact(_model(settings, seed=0), settings, RESULT)
    on_disk = save_artefact(tmp_path / "a", _model(settings, seed=0), settings, RESULT)
    other = create_artefact(_model(settings, seed=1), settings, RESULT)
    assert in_memory.metadata.model_version == on_disk.metadata.model_version
    assert other.metadata.model_version != in_memory.metadata.model_version


def test_save_refuses_a_model_that_does_not_match_the_settings(tmp_path: Path) -> None:
    model = _model(_settings(model={"hidden_size": 16}))
    with pytest.raises(ValueError, match="hidden_size"):
        save_artefact(tmp_path / "a", model, _settings(), RESULT)


@pytest.mark.parametrize(
    ("sections", "field", "fix"),
    [
        (
            {"input": {"value_fields": ("cpu",)}},
            "input.value_fields is ['cpu', 'latency']",
            "input.value_fields = ['cpu', 'latency']",
        ),
        ({"window": {"size": 16}}, "window", "window.size = 8"),
        ({"model": {"hidden_size": 64}}, "hidden_size", "model.hidden_size = 8"),
        ({"model": {"num_layers": 2}}, "num_layers", "model.num_layers = 1"),
        ({"model": {"latent_size": 2}}, "latent_size", "model.latent_size = 4"),
    ],
)
def test_configuration_mismatch_is_refused_with_the_fix(
    saved: Path, sections: dict[str, Any], field: str, fix: str
) -> None:
    with pytest.raises(ArtefactError) as info:
        load_artefact(saved, _settings(**sections), CPU)
    message = str(info.value)
    assert field in message
    assert fix in message
    assert "stream-detector train" in message


def test_fingerprint_mismatch_is_refused(saved: Path) -> None:
    _edit_metadata(saved, config_fingerprint="0" * 16)
    with pytest.raises(ArtefactError, match="config_fingerprint"):
        load_artefact(saved, _settings(), CPU)


def test_tampered_weights_are_refused(saved: Path) -> None:
    path = saved / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit in the last tensor's payload; still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="model_version") as info:
        load_artefact(saved, _settings(), CPU)
    assert "modified or corrupted" in str(info.value)


def test_weights_of_the_wrong_shape_are_refused_even_with_a_matching_hash(
    tmp_path: Path, saved: Path
) -> None:
    wrong = _model(_settings(model={"hidden_size": 16}))
    path = saved / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in wrong.state_dict().items()}, str(path))
    _edit_metadata(saved, model_version=model_version_of(path.read_bytes()))
    with pytest.raises(ArtefactError, match="weights do not fit") as info:
        load_artefact(saved, _settings(), CPU)
    assert "encoder.weight_hh_l0" in str(info.value)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, METADATA_FILE])
def test_missing_file_is_refused(saved: Path, name: str) -> None:
    (saved / name).unlink()
    with pytest.raises(ArtefactError, match=name.replace(".", r"\.")):
        load_artefact(saved, _settings(), CPU)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtefactError, match="does not exist"):
        load_artefact(tmp_path / "nowhere", _settings(), CPU)


@pytest.mark.parametrize("version", [ARTEFACT_FORMAT + 1, 1, 0, "1", True, None])
def test_unsupported_format_version_is_refused(saved: Path, version: Any) -> None:
    _edit_metadata(saved, format_version=version)
    with pytest.raises(ArtefactError, match="format_version"):
        load_artefact(saved, _settings(), CPU)


def test_damaged_metadata_is_refused(saved: Path) -> None:
    (saved / METADATA_FILE).write_bytes(b"{not json")
    with pytest.raises(ArtefactError, match="not valid JSON"):
        load_artefact(saved, _settings(), CPU)


def test_metadata_missing_a_field_is_refused(saved: Path) -> None:
    _edit_metadata(saved, "norm_std")
    with pytest.raises(ArtefactError, match="norm_std"):
        load_artefact(saved, _settings(), CPU)


def test_an_artefact_without_feature_error_means_still_loads(tmp_path: Path, saved: Path) -> None:
    """Format 3 artefacts were written before training recorded them; a format 4 one whose
    training did not (e.g. built by hand) records null. Either loads, without them."""
    _edit_metadata(saved, "feature_error_means", "training_keys", format_version=3)
    loaded = load_artefact(saved, _settings(), CPU).metadata
    assert loaded.format_version == 3 and loaded.feature_error_means is None
    settings = _settings()
    without = replace(RESULT, feature_error_means=None)
    save_artefact(tmp_path / "null", _model(settings), settings, without)
    assert orjson.loads((tmp_path / "null" / METADATA_FILE).read_bytes())[
        "feature_error_means"
    ] is None
    assert load_artefact(tmp_path / "null", settings, CPU).metadata.feature_error_means is None


def test_a_format_4_artefact_must_record_feature_error_means(saved: Path) -> None:
    _edit_metadata(saved, "feature_error_means")
    with pytest.raises(ArtefactError, match=r"missing \['feature_error_means'\]"):
        load_artefact(saved, _settings(), CPU)
    # A format 3 artefact has no such field, not even null.
    _edit_metadata(saved, "training_keys", feature_error_means=None, format_version=3)
    with pytest.raises(ArtefactError, match=r"unknown \['feature_error_means'\]"):
        load_artefact(saved, _settings(), CPU)


def test_a_format_4_artefact_loads_without_training_keys(tmp_path: Path, saved: Path) -> None:
    """Written before training recorded its keys: it serves, with no key known (a detector then
    keeps the new-key rule off, test_detector.py), and a format 5 one must say, null or a list."""
    _edit_metadata(saved, "training_keys")
    with pytest.raises(ArtefactError, match=r"missing \['training_keys'\]"):
        load_artefact(saved, _settings(), CPU)
    _edit_metadata(saved, format_version=4)
    loaded = load_artefact(saved, _settings(), CPU).metadata
    assert loaded.format_version == 4 and loaded.training_keys is None
    settings = _settings()
    without = replace(RESULT, training_keys=None)
    save_artefact(tmp_path / "null", _model(settings), settings, without)
    assert load_artefact(tmp_path / "null", settings, CPU).metadata.training_keys is None


def test_weights_are_safetensors_and_loading_never_unpickles(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = (saved / WEIGHTS_FILE).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = orjson.loads(raw[8 : 8 + header_len])
    assert "encoder.weight_ih_l0" in header
    assert header["encoder.weight_ih_l0"]["dtype"] == "F32"

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("artefact loading must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert load_artefact(saved, _settings(), CPU).metadata.features == FEATURES


def test_resaving_over_an_artefact_replaces_it(tmp_path: Path) -> None:
    settings = _settings()
    directory = tmp_path / "a"
    save_artefact(directory, _model(settings, seed=0), settings, RESULT)
    second = save_artefact(directory, _model(settings, seed=1), settings, RESULT)
    loaded = load_artefact(directory, settings, CPU)
    assert loaded.metadata.model_version == second.metadata.model_version
    assert sorted(p.name for p in directory.iterdir()) == [METADATA_FILE, WEIGHTS_FILE]


# -- every metadata value is checked -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("norm_std", [0.0, 0.0], "norm_std[0] is 0.0; it must be > 0"),
        ("norm_std", [0.5, -3.0], "norm_std[1] is -3.0; it must be > 0"),
        ("norm_std", [0.5], "norm_std needs 2 numbers, one per feature, not 1"),
        ("norm_std", [0.5, "3"], "norm_std[1] is '3', not a number"),
        ("norm_mean", [1.0, True], "norm_mean[1] is True, not a number"),
        ("norm_mean", None, "norm_mean needs 2 numbers"),
        ("global_threshold", -1, "global_threshold is -1; it must be > 0"),
        ("global_threshold", 0.0, "global_threshold is 0.0; it must be > 0"),
        ("global_threshold", "0.4", "global_threshold is '0.4', not a number"),
        ("window", 8.0, "window is 8.0, not an integer >= 2"),
        ("hidden_size", 0, "hidden_size is 0, not an integer >= 1"),
        ("num_layers", True, "num_layers is True, not an integer >= 1"),
        ("features", [], "features is [], not a list of feature names"),
        ("features", ["cpu", "cpu"], "names a feature twice"),
        ("features", ["cpu", 7], "features[1] is 7, not a non-empty string"),
        ("model_version", "v1", "model_version is 'v1', not of the form"),
        ("created_at", "yesterday", "created_at is 'yesterday', not an ISO 8601 time"),
        ("stream_detector_version", "", "stream_detector_version is ''"),
        ("calibration_quantiles", {"1.5": 0.1}, "key '1.5'; keys are quantiles between 0 and 1"),
        ("calibration_quantiles", {"0.5": -0.1}, "calibration_quantiles['0.5'] is -0.1"),
        ("calibration_quantiles", {"0.5": 0.3, "0.9": 0.2}, "must not fall as the quantile rises"),
        ("training", [], "training is [], not an object"),
        ("config_fingerprint", "zz", "config_fingerprint is 'zz', not of the form"),
        ("model_settings", {}, "model_settings needs the settings the model was trained under"),
        ("feature_error_means", [-0.1, 0.3], "feature_error_means[0] is -0.1; an error is >= 0"),
        ("feature_error_means", [0.1], "feature_error_means needs 2 numbers, one per feature"),
        ("feature_error_means", [0.1, "0.3"], "feature_error_means[1] is '0.3', not a number"),
        ("feature_error_means", {"cpu": 0.1}, "feature_error_means needs 2 numbers"),
        ("training_keys", "pump-1", "training_keys is 'pump-1', not a list of keys"),
        ("training_keys", ["pump-1", 7], "training_keys[1] is 7, not a string"),
        ("training_keys", ["pump-2", "pump-1"], "not a list of distinct keys in ascending order"),
        ("training_keys", ["pump-1", "pump-1"], "not a list of distinct keys in ascending order"),
    ],
)
def test_every_unusable_metadata_value_is_refused_by_name(
    saved: Path, field: str, value: Any, named: str
) -> None:
    _edit_metadata(saved, **{field: value})
    with pytest.raises(ArtefactError) as info:
        load_artefact(saved, _settings(), CPU)
    message = str(info.value)
    assert named in message
    assert "restore the artefact as it was written" in message
    assert "stream-detector train" in message


def test_edited_model_settings_no_longer_match_their_fingerprint(saved: Path) -> None:
    recorded = orjson.loads((saved / METADATA_FILE).read_bytes())["model_settings"]
    _edit_metadata(saved, model_settings={**recorded, "normalize.prior_weight": 4.0})
    with pytest.raises(ArtefactError, match="config_fingerprint .* not the hash of model_settings"):
        load_artefact(saved, _settings(normalize={"prior_weight": 4.0}), CPU)


@pytest.mark.parametrize(
    ("result", "named"),
    [
        ({"norm_std": (0.0, 3.0)}, "norm_std[0] is 0.0"),
        ({"norm_std": (0.5, math.inf)}, "norm_std[1] is inf, not finite"),
        ({"norm_mean": (math.nan, 2.0)}, "norm_mean[0] is nan, not finite"),
        ({"norm_mean": (1.0,)}, "norm_mean needs 2 numbers"),
        ({"global_threshold": math.nan}, "global_threshold is nan, not finite"),
        ({"feature_error_means": (0.1, math.inf)}, "feature_error_means[1] is inf, not finite"),
    ],
)
def test_save_refuses_what_loading_would_refuse(
    tmp_path: Path, result: dict[str, Any], named: str
) -> None:
    settings = _settings()
    with pytest.raises(ValueError, match="loading would refuse") as info:
        save_artefact(tmp_path / "a", _model(settings), settings, replace(RESULT, **result))
    assert named in str(info.value)
    assert not (tmp_path / "a").exists()


# -- every setting that changes what the model saw is checked -------------------------------------


@pytest.mark.parametrize(
    ("sections", "setting", "fix"),
    [
        ({"normalize": {"prior_weight": 4.0}}, "normalize.prior_weight", "= 0.0"),
        ({"normalize": {"warmup": 8}}, "normalize.warmup", "= 64"),
        ({"normalize": {"horizon": 100}}, "normalize.horizon", "= 10000"),
        ({"normalize": {"min_std": 0.5}}, "normalize.min_std", "= 1e-06"),
        ({"normalize": {"clip_sigma": 0.0}}, "normalize.clip_sigma", "= 4.0"),
        ({"normalize": {"z_limit": 5.0}}, "normalize.z_limit", "= 10.0"),
    ],
)
def test_normalisation_other_than_in_training_is_refused_with_the_fix(
    saved: Path, sections: dict[str, Any], setting: str, fix: str
) -> None:
    with pytest.raises(ArtefactError) as info:
        load_artefact(saved, _settings(**sections), CPU)
    message = str(info.value)
    assert f"{setting} is " in message and f"set {setting} {fix}" in message
    assert "stream-detector train" in message


def test_a_model_trained_with_the_prior_is_refused_under_the_default(tmp_path: Path) -> None:
    trained_under = _settings(normalize={"prior_weight": 4.0})
    save_artefact(tmp_path / "a", _model(trained_under), trained_under, RESULT)
    refused = "normalize.prior_weight is 4.0 in the artefact but 0.0"
    with pytest.raises(ArtefactError, match=refused):
        load_artefact(tmp_path / "a", _settings(), CPU)
    assert load_artefact(tmp_path / "a", trained_under, CPU).metadata.model_settings[
        "normalize.prior_weight"
    ] == 4.0


@pytest.mark.parametrize(
    "sections",
    [
        {"window": {"stride": 3}},
        {"train": {"stride": 4, "epochs": 2}},
        {"window": {"max_keys": 10, "idle_ttl_s": 5.0}},
        {"threshold": {"sensitivity": 2.0}, "episodes": {"cooldown": 9}},
        {"input": {"label_field": "y", "max_message_bytes": 1000, "csv_delimiter": ";"}},
    ],
)
def test_settings_that_do_not_change_what_a_window_holds_are_free(
    saved: Path, sections: dict[str, Any]
) -> None:
    assert load_artefact(saved, _settings(**sections), CPU).metadata.features == FEATURES


AGGREGATE = {"input": {"mode": "aggregate", "value_fields": ("events",)}}
ONE_FEATURE = replace(RESULT, norm_mean=(1.0,), norm_std=(0.5,), feature_error_means=(0.05,))


@pytest.fixture()
def saved_aggregate(tmp_path: Path) -> Path:
    settings = _settings(**AGGREGATE)
    directory = tmp_path / "aggregate"
    save_artefact(directory, _model(settings), settings, ONE_FEATURE)
    return directory


@pytest.mark.parametrize(
    ("aggregate", "setting"),
    [
        ({"bucket_width_s": 60.0}, "aggregate.bucket_width_s"),
        ({"allowed_lateness_s": 0.0}, "aggregate.allowed_lateness_s"),
        ({"idle_timeout_s": 30.0}, "aggregate.idle_timeout_s"),
        ({"distinct_precision": 10}, "aggregate.distinct_precision"),
        ({"features": [{"name": "events", "agg": "sum", "field": "bytes"}]}, "aggregate.features"),
    ],
)
def test_other_buckets_than_in_training_are_refused(
    saved_aggregate: Path, aggregate: dict[str, Any], setting: str
) -> None:
    with pytest.raises(ArtefactError, match=f"{setting} is .* in the artefact"):
        load_artefact(saved_aggregate, _settings(**AGGREGATE, aggregate=aggregate), CPU)
    late_policy = _settings(**AGGREGATE, aggregate={"late_policy": "drop"})
    assert load_artefact(saved_aggregate, late_policy, CPU).metadata.features == ("events",)


def test_an_events_model_is_refused_in_aggregate_mode_by_input_mode(tmp_path: Path) -> None:
    events = _settings(input={"value_fields": ("events",)})
    save_artefact(tmp_path / "a", _model(events), events, ONE_FEATURE)
    with pytest.raises(ArtefactError, match="input.mode is 'events' in the artefact but 'aggreg"):
        load_artefact(tmp_path / "a", _settings(**AGGREGATE), CPU)


def test_a_model_is_served_only_with_the_score_steps_it_was_calibrated_with(
    tmp_path: Path, saved: Path
) -> None:
    newest = _settings(window={"size": 8, "score_steps": 2})
    save_artefact(tmp_path / "a", _model(newest), newest, RESULT)
    with pytest.raises(ArtefactError, match="window.score_steps is 2 in the artefact but 0 in"):
        load_artefact(tmp_path / "a", _settings(), CPU)
    # A model written before the setting existed scores whole windows, and says so.
    older = "window.score_steps is 0 in the artefact but 2 in"
    with pytest.raises(ArtefactError, match=older) as info:
        load_artefact(saved, newest, CPU)
    assert "set window.score_steps = 0" in str(info.value)
    assert load_artefact(tmp_path / "a", newest, CPU).metadata.window == 8


def test_a_setting_the_artefact_does_not_record_is_refused(saved: Path) -> None:
    recorded = orjson.loads((saved / METADATA_FILE).read_bytes())["model_settings"]
    del recorded["normalize.min_std"]  # as an older writer that did not check it would leave it
    _edit_metadata(saved, model_settings=recorded, config_fingerprint=fingerprint_of(recorded))
    with pytest.raises(ArtefactError, match="does not record normalize.min_std"):
        load_artefact(saved, _settings(), CPU)
