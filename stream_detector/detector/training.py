"""Fitting the autoencoder on presumed-normal events and calibrating its global threshold.

Training windows are cut and normalised by the very WindowStore and KeyNormalizer the service
uses, and calibration scores come from the serving WindowScorer, so the threshold learnt here is in
the same units as the scores the detector will compare with it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch.nn import functional

from stream_detector.config import Settings, TrainConfig
from stream_detector.detector.artefact import (
    ModelArtefact,
    TrainingResult,
    create_artefact,
    save_artefact,
)
from stream_detector.detector.exclusions import ExcludedSpans
from stream_detector.engine.model import LSTMAutoencoder, WindowScorer, select_device
from stream_detector.engine.stage import StagedWindows, WindowStage
from stream_detector.engine.types import Decoded, EventBatch, RejectTally

log = structlog.get_logger(__name__)

# Fewer windows than this cannot be split into train and validation and still mean anything.
MIN_TRAINING_WINDOWS = 10
# Fewer windows than this train a model, but a loose one; `train` says so.
MIN_SOUND_WINDOWS = 1000
# Validation-score quantiles stored in the artefact, for choosing thresholds after the fact.
CALIBRATION_QUANTILES = (0.5, 0.9, 0.99, 0.995, 0.999)
# The most key text (UTF-8 bytes) recorded as the training keys: about 10,000 addresses. The
# artefact must still fit one registry-topic record (kafka.max_message_bytes, 1 MB by default).
MAX_TRAINING_KEY_BYTES = 256 * 1024


@dataclass(frozen=True)
class CollectedWindows:
    """Training windows cut and normalised as serving would, and the global statistics."""

    windows: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n_events: int
    n_keys: int
    # Sorted: the keys with a training window (one not left out), what the model was trained on.
    trained_keys: tuple[str, ...]
    n_excluded: int = 0  # windows left out for overlapping an excluded span


def collect_windows(
    batches: Iterable[Decoded], settings: Settings, exclude: ExcludedSpans | None = None
) -> CollectedWindows:
    """Cut and normalise training windows exactly as serving would (float32 [N, W, F]), with the
    global mean and std [F]. Raises ValueError, saying what was seen, when the data yields fewer
    than MIN_TRAINING_WINDOWS windows.

    `exclude`: windows overlapping a span of their key are dropped after they are cut, so the
    windows kept are cut and normalised exactly as without it: the events in a span still feed
    their key's statistics, as they do when served. The global mean and std count them too; they
    are only the prior that a key's own statistics soon outweigh."""
    decoded: list[EventBatch] = []
    refused = RejectTally()  # counted as they pass: a big file's rejects are not all kept
    for part in batches:
        refused.add(part.rejects)
        if len(part.batch):
            decoded.append(part.batch)
    size = settings.window.size
    n_events = sum(len(batch) for batch in decoded)
    if n_events == 0:
        raise ValueError(
            f"no valid events to train on ({refused}); check the input file and "
            "input.value_fields / input.key_field / input.timestamp_field against its records"
        )
    # Pass 1: global statistics, the prior every new key's normalisation starts from.
    values = np.concatenate([batch.values for batch in decoded]).astype(np.float64)
    mean = values.mean(axis=0).astype(np.float32)
    std = np.maximum(values.std(axis=0), settings.normalize.min_std).astype(np.float32)
    n_keys = len(np.unique(np.concatenate([batch.keys for batch in decoded])))

    # Pass 2: the serving path, batch by batch, so warm-up and evictions look as they will live.
    stage = WindowStage(settings, mean, std, settings.train.stride)
    kept = [
        _kept(staged, exclude)
        for batch in decoded
        for staged in stage.pieces(batch)
        if len(staged.due)
    ]
    chunks = [windows for windows, _, _ in kept]
    n_excluded = sum(excluded for _, excluded, _ in kept)
    trained_keys = tuple(sorted({str(key) for _, _, keys in kept for key in keys.tolist()}))
    n_windows = sum(len(chunk) for chunk in chunks)
    if n_excluded:
        log.info("training windows excluded", excluded=n_excluded, kept=n_windows)
    if n_windows < MIN_TRAINING_WINDOWS:
        left_out = f" ({n_excluded} more overlapped excluded spans)" if n_excluded else ""
        raise ValueError(
            f"too little data to train: {n_events} events over {n_keys} keys gave {n_windows} "
            f"windows{left_out} (window.size = {size}, train.stride = {settings.train.stride}); "
            f"a key needs at least {size} events for its first window and training needs at "
            f"least {MIN_TRAINING_WINDOWS} windows; supply more events per key or lower "
            "window.size"
        )
    windows = np.concatenate(chunks)
    cap = settings.train.max_windows
    if n_windows > cap:
        rng = np.random.default_rng(settings.train.seed)
        keep = np.sort(rng.choice(n_windows, cap, replace=False))
        windows = windows[keep]
        log.info("training windows subsampled", available=n_windows, kept=cap)
    return CollectedWindows(
        windows=windows,
        mean=mean,
        std=std,
        n_events=n_events,
        n_keys=n_keys,
        trained_keys=trained_keys,
        n_excluded=n_excluded,
    )


def _kept(
    staged: StagedWindows, exclude: ExcludedSpans | None
) -> tuple[np.ndarray, int, np.ndarray]:
    """The staged windows not overlapping an excluded span of their key, how many did, and
    the keys of those kept."""
    windows = np.asarray(staged.normalised)
    due = staged.due
    if exclude is None:
        return windows, 0, due.keys
    hit = exclude.overlapping(due.keys, due.start_ts, due.end_ts)
    return windows[~hit], int(hit.sum()), due.keys[~hit]


def train(
    batches: Iterable[Decoded],
    settings: Settings,
    out_dir: Path | None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    exclude: ExcludedSpans | None = None,
) -> ModelArtefact:
    """Collect windows, split them, fit with early stopping on validation loss, calibrate the
    global threshold, and (if out_dir is given) save the artefact.

    Seeded end to end: the same data, settings and seed give identical weights on one machine
    (another CPU's kernels or thread count round differently, and many epochs make that another
    model: docs/detection.md).
    `exclude`: spans per key whose windows are not trained on (see `collect_windows`).
    """
    started = time.perf_counter()
    cfg = settings.train
    collected = collect_windows(batches, settings, exclude)
    device = select_device(settings.model.device)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    split = _split(collected.windows, cfg.validation_fraction, rng, device)
    model = LSTMAutoencoder(
        n_features=collected.windows.shape[2],
        window=collected.windows.shape[1],
        hidden_size=settings.model.hidden_size,
        num_layers=settings.model.num_layers,
        latent_size=settings.model.latent_size,
    ).to(device)
    scorer = WindowScorer(
        model, device, settings.model.batch_size, score_steps=settings.window.score_steps
    )
    log.info(
        "training started",
        windows=len(collected.windows),
        excluded_windows=collected.n_excluded,
        train_windows=len(split.train_x),
        val_windows=len(split.val_windows),
        events=collected.n_events,
        keys=collected.n_keys,
        device=str(device),
    )
    fit = _fit(model, scorer, split, cfg, rng, progress)
    calibration = _calibrate(scorer, split, settings)
    training_keys, key_warnings = _recorded_keys(collected.trained_keys)
    result = TrainingResult(
        norm_mean=tuple(float(v) for v in collected.mean),
        norm_std=tuple(float(v) for v in collected.std),
        calibration_quantiles=calibration.quantiles,
        global_threshold=calibration.quantiles[f"{cfg.calibration_quantile:g}"],
        training={
            "epochs_run": len(fit.val_history),
            "best_epoch": fit.best_epoch,
            "best_val_loss": fit.best_loss,
            "stopped_early": len(fit.val_history) < cfg.epochs,
            "train_loss": fit.train_history,
            "val_loss": fit.val_history,
            "windows": len(collected.windows),
            "excluded_windows": collected.n_excluded,
            "train_windows": len(split.train_x),
            "val_windows": len(split.val_windows),
            "events": collected.n_events,
            "keys": collected.n_keys,
            "seed": cfg.seed,
            "trim_fraction": cfg.trim_fraction,
            "average_epochs": cfg.average_epochs,
            "seconds": round(time.perf_counter() - started, 3),
            "device": str(device),
            "warnings": calibration.warnings + key_warnings,
        },
        feature_error_means=calibration.feature_error_means,
        training_keys=training_keys,
    )
    model = model.cpu()
    if out_dir is None:
        artefact = create_artefact(model, settings, result)
    else:
        artefact = save_artefact(Path(out_dir), model, settings, result)
    log.info(
        "training finished",
        model_version=artefact.metadata.model_version,
        best_epoch=fit.best_epoch,
        best_val_loss=fit.best_loss,
        global_threshold=result.global_threshold,
        seconds=result.training["seconds"],
    )
    return artefact


@dataclass(frozen=True)
class _Split:
    train_x: torch.Tensor  # on the training device
    val_windows: np.ndarray


def _split(
    windows: np.ndarray, validation_fraction: float, rng: np.random.Generator, device: torch.device
) -> _Split:
    """A seeded random validation split; each part keeps at least one window."""
    n = len(windows)
    order = rng.permutation(n)
    n_val = min(max(1, round(n * validation_fraction)), n - 1)
    return _Split(
        train_x=torch.from_numpy(windows[order[n_val:]]).to(device),
        val_windows=windows[order[:n_val]],
    )


@dataclass(frozen=True)
class _Fit:
    train_history: list[float]
    val_history: list[float]
    best_epoch: int
    best_loss: float


def _fit(
    model: LSTMAutoencoder,
    scorer: WindowScorer,
    split: _Split,
    cfg: TrainConfig,
    rng: np.random.Generator,
    progress: Callable[[dict[str, Any]], None] | None,
) -> _Fit:
    """Epochs until `cfg.patience` epochs bring no better validation loss; leaves `model` at its
    best epoch's (averaged) weights, in eval mode."""
    average = _WeightAverage.over_epochs(model, cfg, len(split.train_x))
    optimiser = torch.optim.Adam(average.trained.parameters(), lr=cfg.learning_rate)
    train_history: list[float] = []
    val_history: list[float] = []
    best_loss, best_epoch, stale = math.inf, 0, 0
    best_state: dict[str, torch.Tensor] = {}  # filled by epoch 1: a finite loss beats inf
    for epoch in range(1, cfg.epochs + 1):
        train_loss = _train_epoch(
            average, optimiser, split.train_x, cfg.batch_size, cfg.trim_fraction, rng
        )
        # Validation loss is the mean window score, measured the way serving measures it.
        val_loss = float(np.mean(scorer.score(split.val_windows).scores, dtype=np.float64))
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise ValueError(
                f"training diverged at epoch {epoch} (train loss {train_loss}, validation loss "
                f"{val_loss}); lower train.learning_rate (now {cfg.learning_rate})"
            )
        train_history.append(train_loss)
        val_history.append(val_loss)
        improved = val_loss < best_loss
        if improved:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = _snapshot(model)
        else:
            stale += 1
        line = {
            "epoch": epoch,
            "epochs": cfg.epochs,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best": improved,
        }
        log.info("training epoch", **line)
        if progress is not None:
            progress(line)
        if stale >= cfg.patience:
            log.info("early stopping", epoch=epoch, best_epoch=best_epoch, patience=cfg.patience)
            break
    model.load_state_dict(best_state)
    model.eval()
    return _Fit(train_history, val_history, best_epoch, best_loss)


@dataclass(frozen=True)
class _Calibration:
    quantiles: dict[str, float]  # validation-score quantiles by "q"
    feature_error_means: tuple[float, ...]  # validation windows' mean error per feature
    warnings: list[str]


def _calibrate(scorer: WindowScorer, split: _Split, settings: Settings) -> _Calibration:
    """The validation scores' quantiles (the configured one is the global threshold), the mean
    error per feature (what drift compares each feature's live errors with), and what the data
    was too small to estimate well."""
    scored = scorer.score(split.val_windows)
    val_scores = scored.scores.astype(np.float64)
    n_val = len(split.val_windows)
    warnings = _small_data_warnings(len(split.train_x) + n_val, n_val, settings)
    for warning in warnings:
        log.warning("training data too small", detail=warning)
    quantiles = sorted({*CALIBRATION_QUANTILES, settings.train.calibration_quantile})
    values = np.quantile(val_scores, quantiles)
    return _Calibration(
        quantiles={f"{q:g}": float(v) for q, v in zip(quantiles, values, strict=True)},
        feature_error_means=tuple(
            float(v) for v in scored.feature_errors.astype(np.float64).mean(axis=0)
        ),
        warnings=warnings,
    )


def _recorded_keys(keys: tuple[str, ...]) -> tuple[tuple[str, ...] | None, list[str]]:
    """The training keys to record, or None (with the warning training keeps) when they are
    more than the artefact can carry."""
    if sum(len(key.encode()) for key in keys) <= MAX_TRAINING_KEY_BYTES:
        return keys, []
    warning = (
        f"{len(keys)} training keys are more than the artefact records "
        f"({MAX_TRAINING_KEY_BYTES // 1024} KiB of key text): episodes.alert_new_keys will have "
        "no keys to go by with this model"
    )
    log.warning("training keys not recorded", detail=warning)
    return None, [warning]


def _small_data_warnings(n_windows: int, n_val: int, settings: Settings) -> list[str]:
    """What the data is too small to compute well: said at training time, kept in the artefact.

    A quantile q of n scores is only an estimate when n (1 - q) >= 1; below that it is the
    sample maximum, and the global threshold then rests on one window.
    """
    warnings = []
    quantile = settings.train.calibration_quantile
    needed = math.ceil(1.0 / (1.0 - quantile))
    if n_val < needed:
        warnings.append(
            f"train.calibration_quantile {quantile:g} of {n_val} validation windows is their "
            f"maximum: it needs at least {needed}; supply more data, or lower the quantile"
        )
    if n_windows < MIN_SOUND_WINDOWS:
        warnings.append(
            f"{n_windows} training windows are few for an autoencoder "
            f"({MIN_SOUND_WINDOWS}+ advised): expect a loose fit and a noisy threshold"
        )
    return warnings


class _WeightAverage:
    """The weights training steps (`trained`) and their exponential moving average, kept in the
    model that is validated, calibrated and saved (`averaged`).

    Adam's last steps move the weights by what the last batches held, so the weights at an
    epoch's end, and the validation loss that picks the best epoch among them, swing from epoch
    to epoch; an average over about an epoch of steps does not (SMAP's validation loss falls
    smoothly to its minimum with it, and bounces without). With no averaging, `trained` is the
    saved model itself.
    """

    def __init__(self, averaged: LSTMAutoencoder, decay: float) -> None:
        self.averaged = averaged
        self.trained = copy.deepcopy(averaged) if decay > 0 else averaged
        self._pairs = list(zip(averaged.parameters(), self.trained.parameters(), strict=True))
        self._weight = 1.0 - decay

    @classmethod
    def over_epochs(cls, model: LSTMAutoencoder, cfg: TrainConfig, n_train: int) -> _WeightAverage:
        """Averaging over `cfg.average_epochs` epochs of steps (0: none)."""
        if cfg.average_epochs <= 0:
            return cls(model, 0.0)
        steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        return cls(model, 1.0 - 1.0 / max(1.0, cfg.average_epochs * steps_per_epoch))

    @torch.no_grad()
    def step(self) -> None:
        """Fold the trained weights, as one optimiser step left them, into the average."""
        if self.trained is self.averaged:
            return
        for average, current in self._pairs:
            average.lerp_(current, self._weight)


def _train_epoch(
    average: _WeightAverage,
    optimiser: torch.optim.Optimizer,
    train_x: torch.Tensor,
    batch_size: int,
    trim_fraction: float,
    rng: np.random.Generator,
) -> float:
    """One shuffled pass; the loss is summed on the device so no step waits on a host sync.
    Returns the mean trimmed loss over whole windows (what the artefact records as train_loss:
    with a trim, lower than the validation loss, which is the served score of every window)."""
    model = average.trained
    model.train()
    n = len(train_x)
    order = torch.from_numpy(rng.permutation(n)).to(train_x.device)
    total = torch.zeros((), dtype=torch.float32, device=train_x.device)
    for start in range(0, n, batch_size):
        x = train_x[order[start : start + batch_size]]
        optimiser.zero_grad(set_to_none=True)
        loss = _trimmed_loss(model(x), x, trim_fraction)
        loss.backward()
        optimiser.step()
        average.step()
        total += loss.detach() * len(x)
    return float(total) / n


def _trimmed_loss(
    reconstruction: torch.Tensor, x: torch.Tensor, trim_fraction: float
) -> torch.Tensor:
    """The mean squared error over the batch's windows, leaving out its `trim_fraction` worst-
    reconstructed ones (at least one window stays).

    Training data is only mostly normal. Fitted on every window, the model learns to reproduce
    the few anomalies in it too, and scores their like low when they come again; the windows it
    reconstructs worst are where those anomalies are, so they are left out (a trimmed loss, as in
    robust regression). The validation loss and the calibration still score every window."""
    if trim_fraction <= 0:
        return functional.mse_loss(reconstruction, x)
    per_window = (reconstruction - x).square().mean(dim=(1, 2))
    kept = max(1, round(len(per_window) * (1 - trim_fraction)))
    return per_window.topk(kept, largest=False).values.mean()


def _snapshot(model: LSTMAutoencoder) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}
