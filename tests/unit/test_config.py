"""Settings: precedence, validation messages, and the shipped example file."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_detector.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_example_file_loads_and_equals_defaults() -> None:
    # The annotated example documents every default; if one drifts, this fails.
    assert load_settings(ROOT / "examples" / "detector.toml") == Settings()


def test_precedence_file_then_env_then_overrides(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[kafka]\ngroup_id = "from-file"\nalert_topic = "file-alerts"\n')
    monkeypatch.setenv("SD_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("SD_WINDOW__SIZE", "16")
    settings = load_settings(config, {"window": {"size": 12}})
    assert settings.kafka.alert_topic == "file-alerts"
    assert settings.kafka.group_id == "from-env"
    assert settings.window.size == 12


def test_error_names_field_and_fix() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"window": {"size": 1}, "kafka": {"bogus": 1}})
    message = str(info.value)
    assert "window.size" in message and "SD_WINDOW__SIZE" in message
    assert "kafka.bogus" in message and "unknown setting" in message


def test_exactly_once_with_the_local_state_store_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"kafka": {"processing_guarantee": "exactly_once"}})
    message = str(info.value)
    assert "kafka.processing_guarantee" in message and "state.store" in message
    assert "state.store = 'kafka'" in message and "'none'" in message
    for store in ("kafka", "none"):
        settings = load_settings(
            None, {"kafka": {"processing_guarantee": "exactly_once"}, "state": {"store": store}}
        )
        assert settings.state.store == store


def test_missing_and_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[window\nsize = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_kafka_metadata_tokens_map_to_none() -> None:
    settings = load_settings(
        None, {"input": {"key_field": "@message_key", "timestamp_field": "@broker_timestamp"}}
    )
    assert settings.input.key_field is None and settings.input.timestamp_field is None


def test_secret_is_masked_in_dumps() -> None:
    settings = load_settings(None, {"kafka": {"sasl_password": "hunter2"}})
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"


def test_model_fingerprint_tracks_architecture_only() -> None:
    base = Settings()
    assert base.model_fingerprint() == load_settings(None, {"kafka": {"group_id": "x"}}).model_fingerprint()
    assert base.model_fingerprint() != load_settings(None, {"window": {"size": 16}}).model_fingerprint()


def test_score_steps_are_recorded_only_when_set_so_models_of_whole_windows_stay_valid() -> None:
    base = Settings()
    assert "window.score_steps" not in base.model_settings()
    all_steps = load_settings(None, {"window": {"size": 8, "score_steps": 8}})
    assert "window.score_steps" not in all_steps.model_settings()  # the whole window, as 0
    newest = load_settings(None, {"window": {"size": 8, "score_steps": 2}})
    assert newest.model_settings()["window.score_steps"] == 2
    whole = load_settings(None, {"window": {"size": 8}})
    assert newest.model_fingerprint() != whole.model_fingerprint()


def test_score_steps_beyond_the_window_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"score_steps \(9\) must not exceed size \(8\)") as info:
        load_settings(None, {"window": {"size": 8, "score_steps": 9}})
    assert "set it in the TOML" not in str(info.value)  # no field to point at: both are named
