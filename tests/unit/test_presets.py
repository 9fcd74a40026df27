"""Presets are TOML files read like a config file, one merged over the one it extends."""

from __future__ import annotations

import pytest

from stream_detector.config import load_settings
from stream_detector.scenarios.presets import PRESETS_DIR, preset


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.toml")))
def test_every_preset_is_valid_settings(name: str) -> None:
    load_settings(None, preset(name))  # raises ConfigError on an unknown or invalid field


def test_a_preset_extends_another_and_overrides_only_what_it_names() -> None:
    flows, demo = preset("flows"), preset("network_demo")
    assert "extends" not in demo
    # as its bundled model was trained
    assert demo["window"] == {**flows["window"], "size": 12, "score_steps": 0}
    assert demo["model"] == {**flows["model"], "device": "auto"}
    assert demo["threshold"]["warmup"] == flows["threshold"]["warmup"]
    assert demo["threshold"]["sensitivity"] == 12.0


def test_each_call_is_a_fresh_dict() -> None:
    preset("flows")["window"]["size"] = 999
    assert preset("flows")["window"]["size"] == 8


def test_an_unknown_preset_names_the_known_ones() -> None:
    known = "flows, goflow2, iot_demo, network_demo, suricata-flow, telegraf-cpu, zeek-conn"
    with pytest.raises(ValueError, match=f"no preset named 'nope'; the presets are: {known}$"):
        preset("nope")
