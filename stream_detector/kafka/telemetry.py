"""Prometheus metrics of the service, in a registry of its own.

An own CollectorRegistry (not the process-global default) keeps two services in one process, as in
tests, from colliding, and keeps library metrics out of the scrape. Updates happen once per batch
with whole-batch counts; only rejects and alerts, which are rare, are counted one by one.
"""

from __future__ import annotations

import math
from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream_detector.aggregate.streams import StreamAggregators
from stream_detector.detector.drift import DriftFigures
from stream_detector.detector.facade import DetectionResult, Detector
from stream_detector.detector.feedback import FEEDBACK_KINDS
from stream_detector.engine.alerts import Alert
from stream_detector.engine.types import REJECT_REASONS

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """Every metric the service exports; names are documented in README.md."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("sd_events_in", "Messages consumed from the input topics.", registry=r)
        self.events_processed = Counter(
            "sd_events_processed", "Messages decoded into events and fed to the detector.", registry=r
        )
        self.rejects = Counter(
            "sd_rejects", "Messages refused by decode, by reason.", ["reason"], registry=r
        )
        self.filtered = Counter(
            "sd_filtered_records",
            "Messages skipped because they do not match input.filter (not dead-lettered).",
            registry=r,
        )
        self.dead_letters = Counter(
            "sd_dead_letters", "Records produced to the dead-letter topic.", registry=r
        )
        self.windows_scored = Counter("sd_windows_scored", "Windows scored by the model.", registry=r)
        self.alerts = Counter("sd_alerts", "Alerts produced, by kind.", ["kind"], registry=r)
        self.keys_tracked = Gauge("sd_keys_tracked", "Keys held in the window store.", registry=r)
        self.open_episodes = Gauge("sd_open_episodes", "Anomaly episodes now open.", registry=r)
        self.evictions = Counter(
            "sd_evictions", "Keys dropped from the window store (LRU or idle).", registry=r
        )
        self.out_of_order = Counter(
            "sd_out_of_order_events",
            "Events accepted although earlier than an event of their key before them.",
            registry=r,
        )
        # Aggregate mode (input.mode = "aggregate"); they stay 0 in events mode.
        self.late_events = Counter(
            "sd_late_events",
            "Raw events whose bucket their partition's watermark had closed, by aggregate.late_policy.",
            ["policy"],
            registry=r,
        )
        self.aggregate_keys = Gauge(
            "sd_aggregate_keys", "Keys with open or idling buckets, summed over partitions.", registry=r
        )
        self.aggregate_evictions = Counter(
            "sd_aggregate_evictions",
            "Keys whose buckets ended after aggregate.idle_timeout_s of silence.",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "sd_batch_seconds",
            "Wall time to decode, score and hand one consumed batch to the producer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "sd_model_seconds",
            "Wall time of model inference for one consumed batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "sd_consumer_lag",
            "Messages behind the fetch high watermark, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.in_flight = Gauge(
            "sd_produce_in_flight", "Produced messages not yet acknowledged.", registry=r
        )
        self.delivery_retries = Counter(
            "sd_delivery_retries", "Produced messages sent again after a delivery error.", registry=r
        )
        self.commits = Counter("sd_offset_commits", "Offset commits issued.", registry=r)
        self.model_info = Gauge(
            "sd_model_info", "The loaded model (value is always 1).", ["model_version"], registry=r
        )
        # Drift of the live scores from the loaded model's training calibration (README,
        # "Drift"): NaN until there is enough to measure. Monitoring only.
        self.drift_psi = Gauge(
            "sd_drift_score_psi",
            "Population stability index of recent scores against the training calibration "
            "quantiles (NaN until drift.min_windows).",
            ["model_version"],
            registry=r,
        )
        self.drift_median_ratio = Gauge(
            "sd_drift_median_ratio",
            "Median of recent scores over the training (validation) median.",
            ["model_version"],
            registry=r,
        )
        self.drift_over_threshold = Gauge(
            "sd_drift_over_threshold_share",
            "Share of recent windows over their key's threshold.",
            ["model_version"],
            registry=r,
        )
        self.drift_new_keys = Gauge(
            "sd_drift_new_key_share",
            "Of the keys seen in the last drift.log_interval_s, the share with no state before "
            "(never seen, or evicted since).",
            ["model_version"],
            registry=r,
        )
        self.drift_feature_ratio = Gauge(
            "sd_drift_feature_error_ratio",
            "Mean reconstruction error of recent windows over the training (validation) mean, "
            "per feature: which feature drifted (NaN until drift.min_windows, or for a model "
            "artefact that does not record the training means).",
            ["model_version", "feature"],
            registry=r,
        )
        self.retrain_due = Gauge(
            "sd_retrain_due",
            "1 when retraining is due (score PSI over drift.psi_bound, or the model older than "
            "drift.max_model_age_days); the `drift` log line says why.",
            ["model_version"],
            registry=r,
        )
        # Operator feedback (README, "Operator feedback").
        self.feedback_events = Counter(
            "sd_feedback_events",
            "Feedback events applied from kafka.feedback_topic, by kind.",
            ["kind"],
            registry=r,
        )
        self.feedback_duplicates = Counter(
            "sd_feedback_duplicates",
            "Feedback events not applied because their id was applied before.",
            registry=r,
        )
        self.feedback_rejected = Counter(
            "sd_feedback_rejected",
            "Feedback records that could not be applied (dead-lettered with reason bad_feedback).",
            registry=r,
        )
        self.muted_alerts = Counter(
            "sd_muted_alerts", "Alerts not published because a `mute` covered them.", registry=r
        )
        # The model lifecycle (README, "Model lifecycle").
        self.model_swaps = Counter(
            "sd_model_swaps",
            "Models swapped in between batches because the registry's active version changed.",
            registry=r,
        )
        self.model_load_failures = Counter(
            "sd_model_load_failures",
            "Registry versions that could not be served (the current model stayed).",
            registry=r,
        )
        self.retrains = Counter(
            "sd_retrains",
            "Retrains inside run, by outcome: started, finished, failed.",
            ["outcome"],
            registry=r,
        )
        self.shadow_verdicts = Counter(
            "sd_shadow_verdicts",
            "Shadow periods concluded, by verdict: pass, fail.",
            ["verdict"],
            registry=r,
        )
        for outcome in ("started", "finished", "failed"):
            self.retrains.labels(outcome=outcome)
        for verdict in ("pass", "fail"):
            self.shadow_verdicts.labels(verdict=verdict)
        for kind in FEEDBACK_KINDS:
            self.feedback_events.labels(kind=kind)
        for reason in REJECT_REASONS:
            self.rejects.labels(reason=reason)
        for kind in ("open", "resolve"):
            self.alerts.labels(kind=kind)
        for policy in ("dead_letter", "drop"):
            self.late_events.labels(policy=policy)
        self._evicted_seen = 0
        self._out_of_order_seen = 0
        self._late_seen = 0
        self._aggregate_evicted_seen = 0
        self._features: tuple[str, ...] = ()

    def start_model(self, model_version: str, features: Sequence[str] | None = None) -> None:
        """The loaded model, and its drift series present from the start (NaN: not measured).

        `features`, the model's feature names, are given with the first model; one swapped in
        later has the same (loading refuses a model whose features differ from the settings')."""
        if features is not None:
            self._features = tuple(features)
        self.model_info.labels(model_version=model_version).set(1)
        for gauge in self._drift_gauges():
            gauge.labels(model_version=model_version).set(math.nan)
        for feature in self._features:
            self.drift_feature_ratio.labels(model_version=model_version, feature=feature).set(
                math.nan
            )
        self.retrain_due.labels(model_version=model_version).set(0)

    def count_alerts(self, alerts: list[Alert]) -> None:
        """Alerts published, by kind (a batch's, and the resolves a model swap publishes)."""
        for kind, count in Tally(alert.kind for alert in alerts).items():
            self.alerts.labels(kind=kind).inc(count)

    def model_swapped(self, previous: str, model_version: str) -> None:
        """The served model changed: sd_model_info and the drift series follow the new one."""
        self.model_swaps.inc()
        self.model_info.labels(model_version=previous).set(0)
        self.start_model(model_version)

    def record_drift(self, model_version: str, figures: DriftFigures) -> None:
        """The drift figures after a batch (a few dozen bins' worth of work)."""
        values = (
            figures.psi,
            figures.median_ratio,
            figures.over_threshold_share,
            figures.new_key_share,
        )
        for gauge, value in zip(self._drift_gauges(), values, strict=True):
            gauge.labels(model_version=model_version).set(value)
        for feature, ratio in figures.feature_error_ratios.items():
            self.drift_feature_ratio.labels(model_version=model_version, feature=feature).set(ratio)
        self.retrain_due.labels(model_version=model_version).set(int(figures.retrain_due))

    def _drift_gauges(self) -> tuple[Gauge, ...]:
        return (
            self.drift_psi,
            self.drift_median_ratio,
            self.drift_over_threshold,
            self.drift_new_keys,
        )

    def record_batch(
        self, consumed: int, result: DetectionResult, detector: Detector, seconds: float
    ) -> None:
        self.events_in.inc(consumed)
        self.events_processed.inc(len(result.decoded.batch))
        self.filtered.inc(result.decoded.filtered)
        if result.decoded.rejects:
            for reason, count in Tally(r.reason for r in result.decoded.rejects).items():
                self.rejects.labels(reason=reason).inc(count)
            self.dead_letters.inc(len(result.decoded.rejects))
        self.windows_scored.inc(len(result.scored))
        self.muted_alerts.inc(result.muted)
        self.count_alerts(result.alerts)
        self.keys_tracked.set(detector.n_keys)
        self.open_episodes.set(detector.open_episodes)
        evicted = detector.evicted_total
        self.evictions.inc(evicted - self._evicted_seen)
        self._evicted_seen = evicted
        out_of_order = detector.out_of_order_total
        self.out_of_order.inc(out_of_order - self._out_of_order_seen)
        self._out_of_order_seen = out_of_order
        self.batch_seconds.observe(seconds)
        self.model_seconds.observe(result.model_seconds)
        aggregators = detector.aggregators()
        if aggregators is not None:
            self._record_aggregation(aggregators, detector.settings.aggregate.late_policy)

    def _record_aggregation(self, aggregators: StreamAggregators, late_policy: str) -> None:
        """The aggregators keep running totals; the counters take what this batch added."""
        late = aggregators.late_total
        self.late_events.labels(policy=late_policy).inc(late - self._late_seen)
        self._late_seen = late
        evicted = aggregators.evicted_total
        self.aggregate_evictions.inc(evicted - self._aggregate_evicted_seen)
        self._aggregate_evicted_seen = evicted
        self.aggregate_keys.set(aggregators.n_keys)

    def totals(self) -> dict[str, int]:
        """The counters that must balance (events in = processed + dead letters + filtered), for
        the final log line."""
        sample = self.registry.get_sample_value
        return {
            "events_in": int(sample("sd_events_in_total") or 0),
            "events_processed": int(sample("sd_events_processed_total") or 0),
            "dead_letters": int(sample("sd_dead_letters_total") or 0),
            "filtered": int(sample("sd_filtered_records_total") or 0),
            "windows_scored": int(sample("sd_windows_scored_total") or 0),
            "alerts": sum(int(sample("sd_alerts_total", {"kind": k}) or 0) for k in ("open", "resolve")),
        }

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def drop_partition(self, topic: str, partition: int) -> None:
        """A revoked partition's lag is no longer ours to report."""
        try:
            self.consumer_lag.remove(topic, str(partition))
        except KeyError:
            pass
