"""Safe, self-describing model artefacts: a directory with weights and the facts needed to use them.

Weights are stored with safetensors, never pickle, so loading a model file cannot run code. The
metadata records everything a detector must agree with (features, window, architecture, the
normalisation statistics and the calibrated threshold); `load_artefact` refuses an artefact that
does not match the running configuration instead of scoring with a silently wrong model.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from stream_detector import __version__
from stream_detector.config import UNRECORDED_MODEL_SETTINGS, Settings, fingerprint_of
from stream_detector.detector.mapping import (
    checked_mapping,
    completed_settings,
    explicit_names,
    input_mapping,
    same_json,
)
from stream_detector.engine.model import LSTMAutoencoder, select_device

log = structlog.get_logger(__name__)

# 2: metadata records model_settings, the settings the model was trained under, by name.
# 3: and input_mapping, how records became keys, times and features (see mapping.py).
# 4: and feature_error_means, the validation windows' mean error per feature (for drift).
# 5: and training_keys, the keys of the training data (what a key "new" to the model means).
ARTEFACT_FORMAT = 5
# Older artefacts still load, without the fields added since: nothing else about them changed.
_READABLE_FORMATS = (2, 3, 4, ARTEFACT_FORMAT)
# The fields each format added, absent from the formats before it.
_ADDED_IN = {"input_mapping": 3, "feature_error_means": 4, "training_keys": 5}
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
_VERSION_PREFIX = "lstm-ae-"
_RETRAIN = "retrain with `stream-detector train`"
_DAMAGED = (
    "metadata.json was edited or damaged; restore the artefact as it was written, or "
    + _RETRAIN
)
_VERSION_PATTERN = re.compile(re.escape(_VERSION_PREFIX) + "[0-9a-f]{12}")
_FINGERPRINT_PATTERN = re.compile("[0-9a-f]{16}")


class ArtefactError(Exception):
    """An artefact that cannot be used; the message names the problem and how to fix it."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything in metadata.json; `model_version` is derived from the weights file's sha256."""

    format_version: int
    model_version: str
    created_at: str
    stream_detector_version: str
    features: tuple[str, ...]
    window: int
    hidden_size: int
    num_layers: int
    latent_size: int
    config_fingerprint: str
    model_settings: dict[str, Any]
    # None for a format 2 artefact, written before the mapping was recorded.
    input_mapping: dict[str, Any] | None
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    calibration_quantiles: dict[str, float]
    global_threshold: float
    training: dict[str, Any]
    # None for an artefact of format 3 or older, or one whose training did not record them.
    feature_error_means: tuple[float, ...] | None
    # Sorted; None for an artefact of format 4 or older, or one whose training did not record them.
    training_keys: tuple[str, ...] | None


@dataclass(frozen=True)
class ModelArtefact:
    model: LSTMAutoencoder
    metadata: ModelMetadata


@dataclass(frozen=True)
class TrainingResult:
    """What training learned besides the weights; the rest of the metadata comes from settings."""

    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    calibration_quantiles: dict[str, float]
    global_threshold: float
    training: dict[str, Any]
    # Mean per-feature reconstruction error of the validation windows, in feature order.
    feature_error_means: tuple[float, ...] | None = None
    # The distinct keys of the training data.
    training_keys: tuple[str, ...] | None = None


def model_version_of(weights: bytes) -> str:
    """Content-derived version: two artefacts share one only if their weights are identical."""
    return _VERSION_PREFIX + hashlib.sha256(weights).hexdigest()[:12]


def is_model_version(text: object) -> bool:
    """Whether `text` has the form of a model version, e.g. to validate one read from a file."""
    return type(text) is str and _VERSION_PATTERN.fullmatch(text) is not None


def _serialise(model: LSTMAutoencoder) -> bytes:
    # safetensors output is deterministic for equal tensors, so the hash identifies the weights.
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    return save_safetensors(tensors)


def _assemble(
    model: LSTMAutoencoder, settings: Settings, result: TrainingResult
) -> tuple[ModelArtefact, bytes]:
    features = tuple(settings.input.value_fields)
    architecture = {
        "n_features": len(features),
        "window": settings.window.size,
        "hidden_size": settings.model.hidden_size,
        "num_layers": settings.model.num_layers,
        "latent_size": settings.model.latent_size,
    }
    for name, configured in architecture.items():
        if getattr(model, name) != configured:
            raise ValueError(
                f"model {name} is {getattr(model, name)} but settings say {configured}; "
                "the metadata would describe a different model than the weights"
            )
    weights = _serialise(model)
    metadata = ModelMetadata(
        format_version=ARTEFACT_FORMAT,
        model_version=model_version_of(weights),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        stream_detector_version=__version__,
        features=features,
        window=settings.window.size,
        hidden_size=settings.model.hidden_size,
        num_layers=settings.model.num_layers,
        latent_size=settings.model.latent_size,
        config_fingerprint=settings.model_fingerprint(),
        model_settings=settings.model_settings(),
        input_mapping=input_mapping(settings),
        norm_mean=tuple(float(v) for v in result.norm_mean),
        norm_std=tuple(float(v) for v in result.norm_std),
        calibration_quantiles={k: float(v) for k, v in result.calibration_quantiles.items()},
        global_threshold=float(result.global_threshold),
        training=dict(result.training),
        feature_error_means=(
            None
            if result.feature_error_means is None
            else tuple(float(v) for v in result.feature_error_means)
        ),
        training_keys=None if result.training_keys is None else tuple(sorted(result.training_keys)),
    )
    try:  # what training writes must be what loading accepts
        _checked_metadata(asdict(metadata))
    except _BadValue as exc:
        raise ValueError(f"training produced metadata that loading would refuse: {exc}") from None
    return ModelArtefact(model=model, metadata=metadata), weights


def create_artefact(
    model: LSTMAutoencoder, settings: Settings, result: TrainingResult
) -> ModelArtefact:
    """An in-memory artefact (nothing written), versioned exactly as `save_artefact` would."""
    return _assemble(model, settings, result)[0]


def save_artefact(
    directory: Path, model: LSTMAutoencoder, settings: Settings, result: TrainingResult
) -> ModelArtefact:
    """Write the artefact; each file is replaced atomically, weights first.

    A crash between the two replacements leaves new weights beside old metadata, which the
    model_version check in `load_artefact` refuses, rather than a silently mixed artefact.
    """
    artefact, weights = _assemble(model, settings, result)
    directory.mkdir(parents=True, exist_ok=True)
    metadata_json = orjson.dumps(asdict(artefact.metadata), option=orjson.OPT_INDENT_2)
    write_atomic(directory / WEIGHTS_FILE, weights)
    write_atomic(directory / METADATA_FILE, metadata_json + b"\n")
    log.info(
        "model artefact saved",
        path=str(directory),
        model_version=artefact.metadata.model_version,
        global_threshold=artefact.metadata.global_threshold,
    )
    return artefact


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (written and synced under a temporary name first), so that a
    reader finds the old file or the new one, never a part; one writer per path at a time."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_artefact(
    directory: Path, settings: Settings, device: torch.device | None = None
) -> ModelArtefact:
    """Load and verify an artefact against `settings`; raises ArtefactError on any mismatch.

    `device` defaults to the one `settings.model.device` selects. The settings are taken as
    they are: a caller that serves with them must have the mapping the model was trained with;
    `load_artefact_and_settings` completes them from the artefact instead.
    """
    return _load(Path(directory), settings, device, complete=False)[0]


def load_artefact_and_settings(
    directory: Path, settings: Settings, device: torch.device | None = None
) -> tuple[ModelArtefact, Settings]:
    """Load an artefact, and the settings to serve it with: `settings` with every input mapping
    setting it does not give explicitly taken from the artefact (logged), so data shaped like
    the training data needs no configuration. Raises ArtefactError on any mismatch, naming a
    given setting that contradicts the artefact's and the fix.
    """
    return _load(Path(directory), settings, device, complete=True)


def _load(
    directory: Path, settings: Settings, device: torch.device | None, *, complete: bool
) -> tuple[ModelArtefact, Settings]:
    weights_path, metadata_path = _artefact_files(directory)
    metadata = _read_metadata(metadata_path)
    used, taken = settings, {}
    if complete and metadata.input_mapping is not None:
        try:
            used, taken = completed_settings(settings, metadata.input_mapping)
        except ValueError:
            pass  # something given contradicts the artefact: the check below names it
    given = explicit_names(settings) if complete else frozenset()
    _check_against_settings(metadata, used, given, directory)
    if taken:
        log.info(
            "input mapping taken from the model artefact",
            path=str(directory),
            taken=taken,
        )
    model = _verified_model(metadata, weights_path.read_bytes(), directory)
    target = device if device is not None else select_device(used.model.device)
    model = model.to(target).eval()
    log.info(
        "model artefact loaded",
        path=str(directory),
        model_version=metadata.model_version,
        device=str(target),
    )
    return ModelArtefact(model=model, metadata=metadata), used


def verify_artefact(directory: Path) -> ModelMetadata:
    """The artefact's metadata, once everything that holds whatever the configuration is
    checked: both files present, the metadata valid, the weights hashing to its model_version
    and fitting its architecture. Raises ArtefactError.

    For keeping artefacts (a model registry) rather than serving them: `load_artefact` checks
    the same, and the artefact against the running settings besides.
    """
    directory = Path(directory)
    weights_path, metadata_path = _artefact_files(directory)
    metadata = _read_metadata(metadata_path)
    _verified_model(metadata, weights_path.read_bytes(), directory)
    return metadata


def _artefact_files(directory: Path) -> tuple[Path, Path]:
    """The weights and metadata paths; ArtefactError when the directory or either is missing."""
    if not directory.is_dir():
        raise ArtefactError(
            f"model artefact directory {directory} does not exist; {_RETRAIN} --out {directory}, "
            "or point model.path at an existing artefact"
        )
    weights_path, metadata_path = directory / WEIGHTS_FILE, directory / METADATA_FILE
    for path in (weights_path, metadata_path):
        if not path.is_file():
            raise ArtefactError(
                f"model artefact {directory} has no {path.name}; the artefact is incomplete, "
                f"{_RETRAIN} --out {directory}"
            )
    return weights_path, metadata_path


def _verified_model(metadata: ModelMetadata, weights: bytes, directory: Path) -> LSTMAutoencoder:
    """The model built from `weights`, which must be the ones `metadata` names."""
    # Verify and parse the same bytes, so the file cannot change between the check and the load.
    actual_version = model_version_of(weights)
    if actual_version != metadata.model_version:
        raise ArtefactError(
            f"model artefact {directory}: {WEIGHTS_FILE} does not match model_version "
            f"(metadata says {metadata.model_version!r}, the file hashes to {actual_version!r}); "
            f"the weights were modified or corrupted, restore the artefact or {_RETRAIN}"
        )
    return _build_model(metadata, weights, directory)


def _read_metadata(path: Path) -> ModelMetadata:
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ArtefactError(f"{path} is not valid JSON ({exc}); {_RETRAIN}") from None
    if not isinstance(raw, dict):
        raise ArtefactError(f"{path} is not a JSON object; {_RETRAIN}")
    version = raw.get("format_version")
    if type(version) is not int or version not in _READABLE_FORMATS:  # JSON true equals 1
        raise ArtefactError(
            f"{path}: format_version is {version!r} but this stream-detector ({__version__}) "
            f"reads format_version {' or '.join(map(str, _READABLE_FORMATS))}; {_RETRAIN} "
            "with this version"
        )
    expected = {f.name for f in fields(ModelMetadata)}
    expected -= {name for name, added in _ADDED_IN.items() if version < added}
    missing, unknown = expected - raw.keys(), raw.keys() - expected
    if missing or unknown:
        raise ArtefactError(
            f"{path}: metadata fields missing {sorted(missing)} / unknown {sorted(unknown)}; "
            f"the file is damaged or was not written by stream-detector, {_RETRAIN}"
        )
    try:
        return _checked_metadata(raw)
    except _BadValue as exc:
        raise ArtefactError(f"{path}: {exc}; {_DAMAGED}") from None


class _BadValue(ValueError):
    """A metadata value a detector cannot use; the message names the field and what is wrong."""


def _checked_metadata(raw: Mapping[str, Any]) -> ModelMetadata:
    """Metadata whose every value has the type, range and shape a detector relies on.

    Loading must refuse what would make scoring silently wrong: a zero or negative norm_std
    divides windows by nothing, a non-positive threshold flags every window, and a
    fingerprint that is not the hash of the recorded settings means they were edited.
    """
    features = _get(raw, "features", _names)
    n = len(features)
    model_settings = _get(raw, "model_settings", _settings_record)
    fingerprint = _get(raw, "config_fingerprint", _pattern(_FINGERPRINT_PATTERN))
    if fingerprint != fingerprint_of(model_settings):
        raise _BadValue(
            f"config_fingerprint {fingerprint!r} is not the hash of model_settings "
            f"({fingerprint_of(model_settings)!r})"
        )
    mapping = None
    if "input_mapping" in raw:
        mapping = _get(raw, "input_mapping", _stored_mapping)
        _check_mapping_agrees(mapping, features, model_settings)
    error_means = None
    if raw.get("feature_error_means") is not None:
        error_means = _get(raw, "feature_error_means", _error_means(n))
    training_keys = None
    if raw.get("training_keys") is not None:
        training_keys = _get(raw, "training_keys", _keys)
    return ModelMetadata(
        format_version=raw["format_version"],
        model_version=_get(raw, "model_version", _pattern(_VERSION_PATTERN)),
        created_at=_get(raw, "created_at", _timestamp),
        stream_detector_version=_get(raw, "stream_detector_version", _text),
        features=features,
        window=_get(raw, "window", _integer(2)),
        hidden_size=_get(raw, "hidden_size", _integer(1)),
        num_layers=_get(raw, "num_layers", _integer(1)),
        latent_size=_get(raw, "latent_size", _integer(1)),
        config_fingerprint=fingerprint,
        model_settings=model_settings,
        input_mapping=mapping,
        norm_mean=_get(raw, "norm_mean", _numbers(n, positive=False)),
        norm_std=_get(raw, "norm_std", _numbers(n, positive=True)),
        calibration_quantiles=_get(raw, "calibration_quantiles", _quantiles),
        global_threshold=_get(raw, "global_threshold", _number(positive=True)),
        training=_get(raw, "training", _record),
        feature_error_means=error_means,
        training_keys=training_keys,
    )


def _get(raw: Mapping[str, Any], field: str, check: Callable[[Any], Any]) -> Any:
    return _named(field, check, raw[field])


def _named(label: str, check: Callable[[Any], Any], value: Any) -> Any:
    """`check(value)`, with `label` (a field, an [index]) put in front of what it refuses."""
    try:
        return check(value)
    except _BadValue as exc:
        raise _BadValue(f"{label}{exc}") from None


def _each(value: list[Any] | tuple[Any, ...], check: Callable[[Any], Any]) -> tuple[Any, ...]:
    return tuple(_named(f"[{i}]", check, item) for i, item in enumerate(value))


def _number(*, positive: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if type(value) not in (int, float):  # bool is an int subclass; a flag is no number
            raise _BadValue(f" is {value!r}, not a number")
        if not math.isfinite(value):
            raise _BadValue(f" is {value!r}, not finite")
        if positive and value <= 0:
            raise _BadValue(f" is {value!r}; it must be > 0")
        return float(value)

    return check


def _numbers(length: int, *, positive: bool) -> Callable[[Any], tuple[float, ...]]:
    """One finite number per feature (> 0 for a std, which windows are divided by)."""
    item = _number(positive=positive)

    def check(value: Any) -> tuple[float, ...]:
        if not isinstance(value, list | tuple) or len(value) != length:
            shown = len(value) if isinstance(value, list | tuple) else repr(value)
            raise _BadValue(f" needs {length} numbers, one per feature, not {shown}")
        return _each(value, item)

    return check


def _error_means(length: int) -> Callable[[Any], tuple[float, ...]]:
    """One mean squared error per feature: finite and >= 0 (drift divides live errors by it)."""
    numbers = _numbers(length, positive=False)

    def check(value: Any) -> tuple[float, ...]:
        means = numbers(value)
        for i, mean in enumerate(means):
            if mean < 0:
                raise _BadValue(f"[{i}] is {mean!r}; an error is >= 0")
        return means

    return check


def _integer(least: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if type(value) is not int or value < least:
            raise _BadValue(f" is {value!r}, not an integer >= {least}")
        return value

    return check


def _text(value: Any) -> str:
    if type(value) is not str or not value:
        raise _BadValue(f" is {value!r}, not a non-empty string")
    return value


def _pattern(pattern: re.Pattern[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if type(value) is not str or not pattern.fullmatch(value):
            raise _BadValue(f" is {value!r}, not of the form {pattern.pattern!r}")
        return value

    return check


def _timestamp(value: Any) -> str:
    try:
        datetime.fromisoformat(_text(value))
    except ValueError:
        raise _BadValue(f" is {value!r}, not an ISO 8601 time") from None
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise _BadValue(f" is {value!r}, not a list of feature names")
    names = _each(value, _text)
    if len(set(names)) != len(names):
        raise _BadValue(f" is {list(names)!r}, which names a feature twice")
    return names


def _keys(value: Any) -> tuple[str, ...]:
    """Distinct strings in ascending order, as training writes them."""
    if not isinstance(value, list | tuple):
        raise _BadValue(f" is {value!r}, not a list of keys")
    for i, key in enumerate(value):
        if type(key) is not str:
            raise _BadValue(f"[{i}] is {key!r}, not a string")
    keys = tuple(value)
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise _BadValue(" is not a list of distinct keys in ascending order")
    return keys


def _record(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _BadValue(f" is {value!r}, not an object")
    return dict(value)


def _settings_record(value: Any) -> dict[str, Any]:
    record = _record(value)
    if not record or not all(type(name) is str for name in record):
        raise _BadValue(" needs the settings the model was trained under, by name")
    return record


def _stored_mapping(value: Any) -> dict[str, Any]:
    try:
        return checked_mapping(value)
    except ValueError as exc:
        raise _BadValue(str(exc)) from None


def _check_mapping_agrees(
    mapping: dict[str, Any], features: tuple[str, ...], model_settings: dict[str, Any]
) -> None:
    """The mapping repeats the features and the settings that decide them (mode, buckets);
    a copy that differs from the original was edited."""
    recorded = {**model_settings, "input.value_fields": list(features)}
    for name in mapping.keys() & recorded.keys():
        if not same_json(mapping[name], recorded[name]):
            raise _BadValue(
                f"input_mapping[{name!r}] is {mapping[name]!r} but the model was trained with "
                f"{recorded[name]!r}"
            )


def _quantiles(value: Any) -> dict[str, float]:
    """Validation-score quantiles: q in (0, 1), scores >= 0 that do not fall as q rises.

    Only people read them (to pick a threshold after the fact), so none at all is allowed.
    """
    record = _record(value)
    score = _number(positive=False)
    quantiles: dict[str, float] = {}
    for name, raw_score in record.items():
        try:
            q = float(name)
        except ValueError:
            q = math.nan
        if not 0 < q < 1:
            raise _BadValue(f" has the key {name!r}; keys are quantiles between 0 and 1")
        quantiles[name] = _named(f"[{name!r}]", score, raw_score)
        if quantiles[name] < 0:
            raise _BadValue(f"[{name!r}] is {quantiles[name]!r}; a score is >= 0")
    scores = [quantiles[name] for name in sorted(quantiles, key=float)]
    if any(b < a for a, b in zip(scores, scores[1:], strict=False)):
        raise _BadValue(f" is {record!r}; scores must not fall as the quantile rises")
    return quantiles


def _check_against_settings(
    metadata: ModelMetadata, settings: Settings, given: frozenset[str], directory: Path
) -> None:
    """Refuse, naming the setting, both values and the fix, an artefact trained under other
    settings or with another input mapping.

    `given` names the mapping settings the user set explicitly: for those the fix is to remove
    them (the artefact supplies its own); for the rest, to set the artefact's value.
    """
    checks: list[tuple[str, str, Any, Any]] = [
        ("features", "input.value_fields", metadata.features, tuple(settings.input.value_fields)),
        ("window", "window.size", metadata.window, settings.window.size),
        ("hidden_size", "model.hidden_size", metadata.hidden_size, settings.model.hidden_size),
        ("num_layers", "model.num_layers", metadata.num_layers, settings.model.num_layers),
        ("latent_size", "model.latent_size", metadata.latent_size, settings.model.latent_size),
    ]
    trained = {**UNRECORDED_MODEL_SETTINGS, **metadata.model_settings}
    current = {**UNRECORDED_MODEL_SETTINGS, **settings.model_settings()}
    checks += [(name, name, value, current.get(name, "unset")) for name, value in trained.items()]
    if metadata.input_mapping is not None:
        stored, mapped = metadata.input_mapping, input_mapping(settings)
        # The mapping repeats the features, mode and buckets (equal, or loading refused it), so
        # its entries replace theirs. What the configuration gives goes first, so that a key
        # given as key_field where the artefact has key_fields is named as the user wrote it.
        names = [*stored, *(name for name in mapped if name not in stored)]
        names.sort(key=lambda name: name not in given)
        mapping_checks = [
            (name, name, stored.get(name, "unset"), mapped.get(name, "unset")) for name in names
        ]
        checks = mapping_checks + [check for check in checks if check[1] not in names]
    for name, setting, in_artefact, in_config in checks:
        if not same_json(in_artefact, in_config):
            shown = list(in_artefact) if isinstance(in_artefact, tuple) else in_artefact
            if metadata.input_mapping is not None and setting in given:
                fix = (
                    f"remove {setting} from the configuration to use the artefact's, or "
                    f"{_RETRAIN} under this configuration"
                )
            else:
                fix = f"{_RETRAIN} under this configuration, or set {setting} = {shown!r} to match"
                fix += " the artefact"
            raise ArtefactError(
                f"model artefact {directory}: {name} is {in_artefact!r} in the artefact but "
                f"{in_config!r} in the configuration; {fix}"
            )
    unrecorded = sorted(current.keys() - trained.keys())
    if unrecorded:
        raise ArtefactError(
            f"model artefact {directory} does not record {', '.join(unrecorded)}, which this "
            f"stream-detector checks; {_RETRAIN} under this configuration"
        )


def _build_model(metadata: ModelMetadata, weights: bytes, directory: Path) -> LSTMAutoencoder:
    model = LSTMAutoencoder(
        n_features=len(metadata.features),
        window=metadata.window,
        hidden_size=metadata.hidden_size,
        num_layers=metadata.num_layers,
        latent_size=metadata.latent_size,
    )
    try:
        tensors = load_safetensors(weights)
    except SafetensorError as exc:
        raise ArtefactError(
            f"model artefact {directory}: {WEIGHTS_FILE} is not a valid safetensors file ({exc}); "
            f"{_RETRAIN}"
        ) from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if found != expected:
        wrong = sorted(
            name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name)
        )
        detail = ", ".join(f"{n}: file {found.get(n)} vs model {expected.get(n)}" for n in wrong)
        raise ArtefactError(
            f"model artefact {directory}: weights do not fit the architecture in its metadata "
            f"({detail}); the artefact is inconsistent, {_RETRAIN}"
        )
    model.load_state_dict(tensors, strict=True)
    return model
