"""Named detector presets: the settings a scenario serves and trains with, as TOML files.

A preset is a partial settings file (`presets/NAME.toml`, nested like the config file) that the
demo, the bundled models' trainer and `evaluate` merge beneath the feed's own mapping, so a preset
is read the same way a user's config file is and lives in one form only. `extends = "other"` puts
the preset over another one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

from stream_detector.config import deep_merge

PRESETS_DIR: Final = Path(__file__).resolve().parent / "presets"


def preset(name: str) -> dict[str, Any]:
    """The sections of preset `name`, merged over the preset it extends (a fresh dict each call)."""
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.toml")))
        raise ValueError(f"no preset named {name!r}; the presets are: {known}")
    sections = tomllib.loads(path.read_text())
    base = sections.pop("extends", None)
    return deep_merge(preset(base), sections) if base else sections
