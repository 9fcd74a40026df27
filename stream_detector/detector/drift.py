"""Drift figures: how far the live stream has moved from what the model was trained on.

A model fits the data it was trained on; when the data changes (new firmware, other units, a
season it never saw) its reconstruction errors change with it, long before anyone reads the
alerts. The artefact holds the validation scores' quantiles, so the share of scores expected
between each two of them is known; the live shares over a recent horizon, compared with those,
give a population stability index (PSI). Beside it: the live median score over the training
median, the share of windows over their key's threshold, and the share of keys never seen before.
Per feature, the live mean reconstruction error over the training (validation) mean says which
feature moved: the scores average the features, so one that drifted alone shows in its own ratio
long before it moves the score figures.

Monitoring only: nothing here feeds back into scores, thresholds or alerts. Each batch is folded
in with whole-array operations (no Python loop over windows), and memory is a few fixed-size
count arrays, whatever the number of windows or keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import numpy as np

from stream_detector.config import DriftConfig
from stream_detector.detector.artefact import ModelMetadata
from stream_detector.engine.types import ScoredWindows

# Shares below this count as this in the PSI: an empty bin would make ln(o / e) infinite.
SHARE_FLOOR: Final = 1e-4
# The median is read off a histogram of log2(score / training median) in steps of 1/32
# (about 2% apart), over +-16 (a factor of 65536 either way; beyond it scores are clipped).
_LOG2_RANGE: Final = 16.0
_LOG2_STEP: Final = 1.0 / 32.0
_N_FINE: Final = int(2 * _LOG2_RANGE / _LOG2_STEP)
_SECONDS_PER_DAY: Final = 86_400.0


def psi(observed: np.ndarray, expected: np.ndarray, floor: float = SHARE_FLOOR) -> float:
    """Population stability index sum((o - e) ln(o / e)) of two share vectors, each floored so
    that an empty bin counts as rare rather than impossible."""
    o = np.maximum(observed, floor)
    e = np.maximum(expected, floor)
    return float(np.sum((o - e) * np.log(o / e)))


def calibration_bins(quantiles: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(edges, expected shares) of the bins that the validation-score quantiles cut: below the
    lowest, between each two, above the highest. A quantile whose score equals the one below
    it (ties in the validation scores) opens no bin of its own; its share joins the next bin,
    which is where `np.searchsorted(edges, score, side="right")` puts such scores."""
    pairs = sorted((float(q), float(v)) for q, v in quantiles.items())
    edges: list[float] = []
    shares: list[float] = []
    below = 0.0
    for q, value in pairs:
        if edges and value <= edges[-1]:
            continue  # its share stays with the bin above, added when that one closes
        shares.append(q - below)
        edges.append(value)
        below = q
    shares.append(1.0 - below)
    return np.asarray(edges, dtype=np.float64), np.asarray(shares, dtype=np.float64)


def model_age_days(created_at: str | None, now: datetime) -> float | None:
    """Days since `created_at` (ISO 8601; naive times are read as UTC); None when it is absent
    or unreadable: an unknown age never makes retraining due."""
    if not created_at:
        return None
    try:
        created = datetime.fromisoformat(created_at)
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (now - created).total_seconds() / _SECONDS_PER_DAY


@dataclass(frozen=True)
class DriftFigures:
    """The drift figures at one moment; NaN where there is nothing to measure yet."""

    windows: float  # decayed weight of the windows in the horizon
    psi: float  # NaN below min_windows, or without calibration quantiles
    median_ratio: float  # live median score / training median (the 0.5 quantile)
    over_threshold_share: float  # live share of windows over their key's threshold
    expected_over_threshold_share: float  # 1 - the quantile the global threshold was taken at
    new_key_share: float  # of the keys seen in the last closed interval, the share new
    model_age_days: float | None
    retrain_due: bool
    reasons: tuple[str, ...]
    # Per feature name: live mean error / training mean error; NaN below min_windows, without
    # the training means, or where the training mean is 0.
    feature_error_ratios: Mapping[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "none"

    @property
    def top_feature(self) -> tuple[str, float] | None:
        """The feature whose error grew most against training, and its ratio; None when no
        ratio is known."""
        known = [(r, name) for name, r in self.feature_error_ratios.items() if not math.isnan(r)]
        if not known:
            return None
        ratio, name = max(known)
        return name, ratio


def drift_fields(figures: DriftFigures) -> dict[str, object]:
    """The figures as one structured log line's fields, rounded for people to read."""

    def rounded(value: float | None) -> float | None:
        return None if value is None or math.isnan(value) else round(value, 4)

    top = figures.top_feature
    return {
        "windows": round(figures.windows),
        "psi": rounded(figures.psi),
        "median_ratio": rounded(figures.median_ratio),
        "over_threshold_share": rounded(figures.over_threshold_share),
        "expected_over_threshold_share": rounded(figures.expected_over_threshold_share),
        "new_key_share": rounded(figures.new_key_share),
        "model_age_days": rounded(figures.model_age_days),
        "top_feature": None if top is None else top[0],
        "top_feature_ratio": None if top is None else rounded(top[1]),
        "retrain_due": figures.retrain_due,
        "reason": figures.reason,
    }


class DriftMonitor:
    """Decayed score statistics of one model version against its training calibration.

    `features` and `feature_error_means` (the artefact's, None for one written before training
    recorded them) give the per-feature error ratios; without the means they stay NaN.
    """

    def __init__(
        self,
        settings: DriftConfig,
        calibration_quantiles: Mapping[str, float],
        global_threshold: float | None = None,
        created_at: str | None = None,
        features: Sequence[str] = (),
        feature_error_means: Sequence[float] | None = None,
    ) -> None:
        self.settings = settings
        # Per window, every earlier window's weight is multiplied by this: halved after
        # half_life_windows windows.
        self._decay = 0.5 ** (1.0 / settings.half_life_windows)
        self._edges, self._expected = calibration_bins(calibration_quantiles)
        median = calibration_quantiles.get("0.5")
        self._median = float(median) if median is not None and median > 0 else math.nan
        self._coarse = np.zeros(len(self._expected), dtype=np.float64)
        self._fine = np.zeros(_N_FINE, dtype=np.float64)
        self._over = 0.0
        self._weight = 0.0
        self._expected_over = math.nan
        if global_threshold is not None:
            for q, value in calibration_quantiles.items():
                if math.isclose(value, global_threshold):
                    self._expected_over = 1.0 - float(q)
        self.created_at = created_at
        self._keys_seen_at = (0, 0)  # running totals at the start of the open interval
        self._keys_last = (0, 0)
        self._new_key_share = math.nan
        self.features = tuple(features)
        self._train_errors = _training_errors(self.features, feature_error_means)
        self._error_sums = np.zeros(len(self.features), dtype=np.float64)

    @classmethod
    def of_model(
        cls, settings: DriftConfig, meta: ModelMetadata, *, per_feature: bool = True
    ) -> DriftMonitor:
        """Drift of the live stream against this model's training: its scores' calibration and,
        with `per_feature` and where the artefact records them, its features' mean errors."""
        features = meta.features if per_feature else ()
        means = meta.feature_error_means if per_feature else None
        return cls(
            settings,
            meta.calibration_quantiles,
            meta.global_threshold,
            meta.created_at,
            features=features,
            feature_error_means=means,
        )

    def update(self, scored: ScoredWindows) -> None:
        """Fold one batch's windows in, in arrival order: the newest weighs 1, the one before
        it `decay`, and so on, as if they had come one at a time."""
        n = len(scored)
        if n == 0:
            return
        scores = np.asarray(scored.scores, dtype=np.float64)
        weights = self._decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
        carried = self._decay**n
        self._coarse *= carried
        self._coarse += np.bincount(
            np.searchsorted(self._edges, scores, side="right"),
            weights=weights,
            minlength=len(self._coarse),
        )
        if not math.isnan(self._median):
            self._fine *= carried
            self._fine += np.bincount(
                _fine_bin(scores, self._median), weights=weights, minlength=_N_FINE
            )
        self._over = self._over * carried + float(weights[np.asarray(scored.exceed, bool)].sum())
        self._weight = self._weight * carried + float(weights.sum())
        if self._train_errors is not None:
            self._error_sums *= carried
            self._error_sums += weights @ np.asarray(scored.feature_errors, dtype=np.float64)

    def observe_keys(self, seen_total: int, new_total: int) -> None:
        """The window store's running totals of keys seen per ingest step and of those that held
        no slot before it (`WindowStore.keys_seen_total`, `keys_new_total`)."""
        self._keys_last = (seen_total, new_total)

    def close_interval(self) -> None:
        """End the new-key interval: its share is what `figures` reports until the next ends."""
        seen = self._keys_last[0] - self._keys_seen_at[0]
        new = self._keys_last[1] - self._keys_seen_at[1]
        self._new_key_share = new / seen if seen > 0 else math.nan
        self._keys_seen_at = self._keys_last

    def figures(self, now: datetime | None = None) -> DriftFigures:
        """Every figure, and whether retraining is due and why. Cheap: a few dozen bins."""
        cfg = self.settings
        enough = self._weight >= cfg.min_windows and self._weight > 0
        shares = self._coarse / self._weight if self._weight > 0 else self._coarse
        score_psi = psi(shares, self._expected) if enough and len(self._edges) else math.nan
        age = model_age_days(self.created_at, now if now is not None else datetime.now(UTC))
        reasons: list[str] = []
        if score_psi > cfg.psi_bound:  # False for NaN
            reasons.append(
                f"score PSI {score_psi:.3f} > drift.psi_bound {cfg.psi_bound:g} over "
                f"{self._weight:.0f} windows"
            )
        if cfg.max_model_age_days > 0 and age is not None and age > cfg.max_model_age_days:
            reasons.append(
                f"model {age:.1f} days old > drift.max_model_age_days {cfg.max_model_age_days:g}"
            )
        return DriftFigures(
            windows=self._weight,
            psi=score_psi,
            median_ratio=self._median_ratio(),
            over_threshold_share=self._over / self._weight if self._weight > 0 else math.nan,
            expected_over_threshold_share=self._expected_over,
            new_key_share=self._new_key_share,
            model_age_days=age,
            retrain_due=bool(reasons),
            reasons=tuple(reasons),
            feature_error_ratios=self._feature_error_ratios(enough),
        )

    def _feature_error_ratios(self, enough: bool) -> dict[str, float]:
        """Per feature, the decayed live mean error over the training mean (NaN: unknown)."""
        if not enough or self._train_errors is None:
            return dict.fromkeys(self.features, math.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(
                self._train_errors > 0, self._error_sums / self._weight / self._train_errors, np.nan
            )
        return dict(zip(self.features, ratios.tolist(), strict=True))

    def _median_ratio(self) -> float:
        """Live median / training median, interpolated in log space inside its fine bin."""
        total = float(self._fine.sum())
        if total <= 0:
            return math.nan
        cumulative = np.cumsum(self._fine)
        i = int(np.searchsorted(cumulative, total / 2.0, side="left"))
        below = cumulative[i - 1] if i > 0 else 0.0
        within = (total / 2.0 - below) / self._fine[i] if self._fine[i] > 0 else 0.5
        return float(2.0 ** (-_LOG2_RANGE + (i + within) * _LOG2_STEP))


def _training_errors(
    features: tuple[str, ...], means: Sequence[float] | None
) -> np.ndarray | None:
    """The training mean error per feature, as an array; None without them."""
    if means is None:
        return None
    if len(means) != len(features):
        raise ValueError(
            f"{len(means)} feature error means for {len(features)} features {list(features)}"
        )
    return np.asarray(means, dtype=np.float64)


def _fine_bin(scores: np.ndarray, median: float) -> np.ndarray:
    """Fine-histogram bin of each score: log2(score / median) in steps of 1/32, clipped."""
    with np.errstate(divide="ignore"):
        log2 = np.log2(np.maximum(scores, 0.0) / median)
    bins = np.floor((log2 + _LOG2_RANGE) / _LOG2_STEP)
    return np.clip(np.nan_to_num(bins, nan=0.0, neginf=0.0), 0, _N_FINE - 1).astype(np.int64)
