"""The input mapping a model was trained with: how records became keys, times and features.

An artefact records it so that `replay` and `run` need no configuration for data shaped like the
training data: every mapping setting the user did not give is taken from the artefact. A setting
given explicitly (config file, `SD_*`, `--set`, `--preset`) that differs is a contradiction the
artefact check refuses; pydantic's `model_fields_set` on a section tells which were given.

The mapping is a flat record of dotted setting names and JSON values, like `model_settings`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from stream_detector.config import AggregateConfig, InputConfig, Settings

# The [input] settings that say where a record's key, time and features are and which records
# count. Left out: label_field (evaluate only), the size and plausibility limits and the CSV
# delimiter, which belong to where the data is read from, not to what it means.
INPUT_FIELDS = (
    "mode", "key_field", "key_fields", "timestamp_field", "timestamp_unit", "value_fields", "filter"
)
# One limit is recorded after all, and only when lowered from its default: a floor under 2000 says
# the times are step indices read as seconds, which is what they mean; a model trained on them
# refuses every record of the same data under the default floor.
LOWERED_FLOOR = "min_timestamp"
_DEFAULT_FLOOR = InputConfig.model_fields[LOWERED_FLOOR].default
# late_policy only says what happens to a late event, never what a bucket holds.
AGGREGATE_LEFT_OUT = frozenset({"late_policy"})
_KEY_NAMES = ("input.key_field", "input.key_fields")


def mapping_names() -> frozenset[str]:
    """Every dotted name a stored mapping may hold."""
    bucketing = set(AggregateConfig.model_fields) - AGGREGATE_LEFT_OUT
    return frozenset(
        [f"input.{name}" for name in (*INPUT_FIELDS, LOWERED_FLOOR)]
        + [f"aggregate.{name}" for name in bucketing]
    )


def input_mapping(settings: Settings) -> dict[str, Any]:
    """The mapping of `settings` as dotted names -> JSON values.

    The key is recorded in the one form that is in force (key_fields when set, else key_field),
    so a stored mapping never carries a key setting the decoder ignored. The [aggregate] section
    is recorded in aggregate mode only, where it decides what a feature is; min_timestamp only
    when it is below its default (LOWERED_FLOOR).
    """
    section = settings.input.model_dump(mode="json", include=set(INPUT_FIELDS))
    unused_key = "key_field" if settings.input.key_fields is not None else "key_fields"
    mapping = {f"input.{name}": section[name] for name in INPUT_FIELDS if name != unused_key}
    if settings.input.min_timestamp < _DEFAULT_FLOOR:
        mapping[f"input.{LOWERED_FLOOR}"] = settings.input.min_timestamp
    if settings.input.mode == "aggregate":
        bucketing = settings.aggregate.model_dump(mode="json", exclude=set(AGGREGATE_LEFT_OUT))
        mapping.update((f"aggregate.{name}", value) for name, value in bucketing.items())
    return mapping


def explicit_names(settings: Settings) -> frozenset[str]:
    """The dotted names of the [input] and [aggregate] settings the user gave explicitly."""
    return frozenset(
        [f"input.{name}" for name in settings.input.model_fields_set]
        + [f"aggregate.{name}" for name in settings.aggregate.model_fields_set]
    )


def checked_mapping(value: Any) -> dict[str, Any]:
    """A stored mapping that the configuration itself would accept and write back unchanged.

    Raises ValueError naming what is wrong. Validating through the config models checks every
    value's type and allowed values exactly as a config file's would be checked.
    """
    if not isinstance(value, dict) or not all(type(name) is str for name in value):
        raise ValueError(f" is {value!r}, not an object of settings by name")
    unknown = sorted(value.keys() - mapping_names())
    if unknown:
        raise ValueError(f" names {unknown}, which are not input mapping settings")
    try:
        settings = Settings(**_sections(value))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f" is not a valid input mapping ({problems})") from None
    if not same_json(input_mapping(settings), value):
        raise ValueError(
            f" is {value!r}, not as training writes it ({input_mapping(settings)!r}): each "
            "[input] mapping setting, one key form, [aggregate] exactly in aggregate mode"
        )
    return dict(value)


def completed_settings(
    settings: Settings, mapping: dict[str, Any]
) -> tuple[Settings, dict[str, Any]]:
    """`settings` with every mapping setting the user did not give taken from `mapping`, and what
    was taken. The key is one setting here: giving key_field or key_fields takes neither.

    Raises ValueError (a ValidationError) when what was given cannot be combined with the rest;
    that only happens when something given contradicts the artefact, which the artefact check
    then names.
    """
    given = explicit_names(settings)
    key_given = any(name in given for name in _KEY_NAMES)
    taken = {
        name: value
        for name, value in mapping.items()
        if name not in given and not (key_given and name in _KEY_NAMES)
    }
    if not taken:
        return settings, {}
    sections = _sections(taken)
    parts: dict[str, Any] = {name: getattr(settings, name) for name in Settings.model_fields}
    for name, model in (("input", InputConfig), ("aggregate", AggregateConfig)):
        current = getattr(settings, name)
        explicit = {field: getattr(current, field) for field in current.model_fields_set}
        parts[name] = model(**{**explicit, **sections.get(name, {})})
    return Settings(**parts), taken


def _sections(mapping: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Dotted names -> nested sections, as a config file holds them."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in mapping.items():
        section, _, field = name.partition(".")
        sections.setdefault(section, {})[field] = value
    return sections


def same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same value of the same JSON type (lists and tuples alike).

    Python's `==` takes 1 == 1.0 == True, which for a filter value is a different record set.
    """
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return type(a) is type(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b
