"""Safe, self-describing model artefacts: a directory with weights and the facts needed to use them.

Weights are stored with safetensors, never pickle, so loading a model file cannot run code. The
metadata records everything a detector must agree with (features, window, architecture, the
normalisation statistics and the calibrated threshold); `load_artefact` refuses an artefact that
does not match the running configuration instead of scoring with a silently wrong model.
"""

from __future__ import annotations

import hashlib
import os
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
from stream_detector.config import Settings
from stream_detector.engine.model import LSTMAutoencoder, select_device

log = structlog.get_logger(__name__)

ARTEFACT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
_VERSION_PREFIX = "lstm-ae-"
_RETRAIN = "retrain with `stream-detector train`"


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
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    calibration_quantiles: dict[str, float]
    global_threshold: float
    training: dict[str, Any]


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


def model_version_of(weights: bytes) -> str:
    """Content-derived version: two artefacts share one only if their weights are identical."""
    return _VERSION_PREFIX + hashlib.sha256(weights).hexdigest()[:12]


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
    if not len(result.norm_mean) == len(result.norm_std) == len(features):
        raise ValueError("norm_mean and norm_std need one entry per feature")
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
        norm_mean=tuple(float(v) for v in result.norm_mean),
        norm_std=tuple(float(v) for v in result.norm_std),
        calibration_quantiles={k: float(v) for k, v in result.calibration_quantiles.items()},
        global_threshold=float(result.global_threshold),
        training=dict(result.training),
    )
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
    _write_atomic(directory / WEIGHTS_FILE, weights)
    _write_atomic(directory / METADATA_FILE, metadata_json + b"\n")
    log.info(
        "model artefact saved",
        path=str(directory),
        model_version=artefact.metadata.model_version,
        global_threshold=artefact.metadata.global_threshold,
    )
    return artefact


def _write_atomic(path: Path, data: bytes) -> None:
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

    `device` defaults to the one `settings.model.device` selects.
    """
    directory = Path(directory)
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
    metadata = _read_metadata(metadata_path)
    _check_against_settings(metadata, settings, directory)
    weights = weights_path.read_bytes()
    # Verify and parse the same bytes, so the file cannot change between the check and the load.
    actual_version = model_version_of(weights)
    if actual_version != metadata.model_version:
        raise ArtefactError(
            f"model artefact {directory}: {WEIGHTS_FILE} does not match model_version "
            f"(metadata says {metadata.model_version!r}, the file hashes to {actual_version!r}); "
            f"the weights were modified or corrupted, restore the artefact or {_RETRAIN}"
        )
    model = _build_model(metadata, weights, directory)
    target = device if device is not None else select_device(settings.model.device)
    model = model.to(target).eval()
    log.info(
        "model artefact loaded",
        path=str(directory),
        model_version=metadata.model_version,
        device=str(target),
    )
    return ModelArtefact(model=model, metadata=metadata)


def _read_metadata(path: Path) -> ModelMetadata:
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ArtefactError(f"{path} is not valid JSON ({exc}); {_RETRAIN}") from None
    if not isinstance(raw, dict):
        raise ArtefactError(f"{path} is not a JSON object; {_RETRAIN}")
    version = raw.get("format_version")
    if type(version) is not int or version != ARTEFACT_FORMAT:  # JSON true would equal 1
        raise ArtefactError(
            f"{path}: format_version is {version!r} but this stream-detector ({__version__}) "
            f"reads format_version {ARTEFACT_FORMAT}; {_RETRAIN} with this version"
        )
    expected = {f.name for f in fields(ModelMetadata)}
    missing, unknown = expected - raw.keys(), raw.keys() - expected
    if missing or unknown:
        raise ArtefactError(
            f"{path}: metadata fields missing {sorted(missing)} / unknown {sorted(unknown)}; "
            f"the file is damaged or was not written by stream-detector, {_RETRAIN}"
        )
    try:
        return ModelMetadata(
            format_version=int(raw["format_version"]),
            model_version=str(raw["model_version"]),
            created_at=str(raw["created_at"]),
            stream_detector_version=str(raw["stream_detector_version"]),
            features=tuple(str(v) for v in raw["features"]),
            window=int(raw["window"]),
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_layers"]),
            latent_size=int(raw["latent_size"]),
            config_fingerprint=str(raw["config_fingerprint"]),
            norm_mean=tuple(float(v) for v in raw["norm_mean"]),
            norm_std=tuple(float(v) for v in raw["norm_std"]),
            calibration_quantiles={
                str(k): float(v) for k, v in raw["calibration_quantiles"].items()
            },
            global_threshold=float(raw["global_threshold"]),
            training=dict(raw["training"]),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ArtefactError(
            f"{path}: a metadata field has the wrong type ({exc}); {_RETRAIN}"
        ) from None


def _check_against_settings(metadata: ModelMetadata, settings: Settings, directory: Path) -> None:
    checks: list[tuple[str, str, Any, Any]] = [
        ("features", "input.value_fields", metadata.features, tuple(settings.input.value_fields)),
        ("window", "window.size", metadata.window, settings.window.size),
        ("hidden_size", "model.hidden_size", metadata.hidden_size, settings.model.hidden_size),
        ("num_layers", "model.num_layers", metadata.num_layers, settings.model.num_layers),
        ("latent_size", "model.latent_size", metadata.latent_size, settings.model.latent_size),
    ]
    for name, setting, in_artefact, in_config in checks:
        if in_artefact != in_config:
            shown = list(in_artefact) if isinstance(in_artefact, tuple) else in_artefact
            raise ArtefactError(
                f"model artefact {directory}: {name} is {in_artefact!r} in the artefact but "
                f"{in_config!r} in the configuration; {_RETRAIN}, or set {setting} = {shown!r} "
                "to match the artefact"
            )
    if metadata.config_fingerprint != settings.model_fingerprint():
        raise ArtefactError(
            f"model artefact {directory}: config_fingerprint is {metadata.config_fingerprint!r} "
            f"in the artefact but {settings.model_fingerprint()!r} for the configuration; "
            f"{_RETRAIN} with the current configuration"
        )
    n_features = len(metadata.features)
    if len(metadata.norm_mean) != n_features or len(metadata.norm_std) != n_features:
        raise ArtefactError(
            f"model artefact {directory}: norm_mean/norm_std need {n_features} entries "
            f"(one per feature), got {len(metadata.norm_mean)}/{len(metadata.norm_std)}; {_RETRAIN}"
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
