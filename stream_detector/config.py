"""One typed settings tree for every command.

Precedence, highest first: CLI flags (passed in as overrides), ``SD_*`` environment variables
(nested with ``__``, e.g. ``SD_KAFKA__BOOTSTRAP_SERVERS``), the TOML file, then the defaults below.
Validation happens once, at start, and a bad value is reported with its dotted field name and a
hint on how to fix it, never as a stack trace from deep inside the hot path.
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
import tomllib
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from stream_detector.limits import RECORD_FRAMING_BYTES


class ConfigError(Exception):
    """A configuration problem a user can fix; the message names the field and the fix."""


MESSAGE_KEY = "@message_key"
BROKER_TIMESTAMP = "@broker_timestamp"
# key_field = SINGLE_SERIES: a feed with no key (one sensor, one metric) is one series, every
# record keyed SINGLE_SERIES_KEY.
SINGLE_SERIES = "@single_series"
SINGLE_SERIES_KEY = "single_series"
CSV_DELIMITERS: Final = ",;\t|"  # what input.csv_delimiter = "auto" chooses among
# Model settings an artefact records only when they change what the model computes, and what
# their absence means: artefacts written before the setting existed behave as this value.
UNRECORDED_MODEL_SETTINGS: Final = {"window.score_steps": 0}

_PATH_SYNTAX: Final = (
    "a field path is either dotted ('tags.host': key 'tags', then key 'host') or, when it "
    "starts with '/', a JSON Pointer (RFC 6901: '/id.orig_h' is the one key 'id.orig_h', "
    "'/tags/host' is nested; inside a key '~1' stands for '/' and '~0' for '~')"
)
_POINTER_ESCAPE: Final = re.compile(r"~(?![01])")


@functools.cache
def path_segments(path: str) -> tuple[str, ...]:
    """The keys a field path steps through, outermost first; ValueError (naming the path and
    the syntax) if it is a malformed JSON Pointer. Cached: decoders ask once per batch.

    Dotted paths cannot name a key that itself holds a dot (Zeek's `id.orig_h`), which is why
    a path starting with '/' is read as a JSON Pointer instead; a dotted path keeps its meaning.
    """
    if not path.startswith("/"):
        return tuple(path.split("."))
    segments = path[1:].split("/")
    for segment in segments:
        if not segment:
            raise ValueError(f"field path {path!r} names an empty key; {_PATH_SYNTAX}")
        if _POINTER_ESCAPE.search(segment):
            raise ValueError(
                f"field path {path!r} has a '~' not followed by 0 or 1; {_PATH_SYNTAX}"
            )
    return tuple(s.replace("~1", "/").replace("~0", "~") for s in segments)


def column_name(path: str) -> str:
    """The CSV column a field path reads: its keys joined by '.'. A CSV row is flat, so a dotted
    path names the column of its own text and a pointer the column of its keys' text (both
    '/id.orig_h' and 'id.orig_h' read column `id.orig_h`, '/tags/host' reads `tags.host`)."""
    return ".".join(path_segments(path))


def _checked_path(path: str | None) -> str | None:
    if path is not None:
        path_segments(path)
    return path


FilterValue = str | bool | int | float


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(_Section):
    """How raw messages map onto keys, timestamps and feature values."""

    mode: Literal["events", "aggregate"] = Field(
        "events",
        description="'events': each message is one reading of value_fields. 'aggregate': each "
        "message is one raw event (a flow, a request) and the model sees per-key event-time "
        "buckets of them, as defined in [aggregate]; value_fields then names those features.",
    )
    key_field: str | None = Field(
        "key",
        description="Field path of the entity key (dotted, or a JSON Pointer starting with '/'); "
        f"{MESSAGE_KEY!r} uses the Kafka message key; {SINGLE_SERIES!r} makes a feed with no "
        f"key (one sensor, one metric) one series, every record keyed {SINGLE_SERIES_KEY!r}.",
    )
    key_fields: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="A composite key instead of key_field: field paths whose values, each as "
        "text by key_field's rules with '\\' written '\\\\' and '|' written '\\|', are "
        "joined by '|' (host 'h1', cpu 'cpu0' -> 'h1|cpu0'); a record missing any of them is "
        "'missing_key'. Do not also set key_field.",
    )
    timestamp_field: str | None = Field(
        "ts",
        description="Field path of the event time (dotted, or a JSON Pointer); "
        f"{BROKER_TIMESTAMP!r} uses the broker's.",
    )
    timestamp_unit: Literal["auto", "s", "ms", "us", "ns", "rfc3339"] = Field(
        "auto", description="Unit of numeric timestamps; 'auto' infers from magnitude."
    )
    value_fields: tuple[str, ...] = Field(
        ("value",),
        min_length=1,
        description="Field paths of the numeric features, in model order; a path starting with "
        "'/' is a JSON Pointer (RFC 6901: '/id.orig_h' is one key, '/tags/host' nested, '~1' "
        "for '/' and '~0' for '~' in a key), any other is dotted ('tags.host' is nested). A CSV "
        "file is flat: a path reads the column named by its keys joined with '.'.",
    )
    max_message_bytes: int = Field(
        1_000_000,
        gt=0,
        description="Larger message values go to the dead-letter topic as 'oversized'; must fit "
        "under kafka.fetch_max_bytes, so that every record under it can be fetched.",
    )
    min_timestamp: float = Field(
        946_684_800.0,
        description="Earliest plausible event time (epoch s); older is rejected as absurd. The "
        "default, 2000-01-01T00:00:00Z, is before any live feed but after what a producer with "
        "an unset clock, a zero default or a step counter sends; lower it to replay older data "
        "or step-numbered series.",
    )
    max_future_s: float = Field(
        86_400.0 * 365 * 50,
        ge=0,
        description="How far past now an event time may lie before it is rejected as absurd.",
    )
    label_field: str | None = Field(
        None, description="Optional 0/1 label column (evaluate only); ignored by the service."
    )
    filter: dict[str, FilterValue] = Field(
        {},
        description="Decode only records where every field path equals its value (a string, "
        "number or boolean; 1 equals 1.0 but not true; an absent field never matches). Other "
        "records are skipped: neither events nor rejects, not dead-lettered, only counted "
        "(sd_filtered_records_total). For a topic that mixes record types.",
    )
    csv_delimiter: str = Field(
        "auto",
        description="Field separator of CSV files: one character, or 'auto' to pick ',', ';', "
        "tab or '|' from the header line (',' when that is undecided).",
    )

    @field_validator("key_field", "timestamp_field", mode="before")
    @classmethod
    def _kafka_metadata(cls, value: object) -> object:
        # TOML has no null, so the Kafka message key / timestamp are named by these tokens.
        return None if value in (MESSAGE_KEY, BROKER_TIMESTAMP) else value

    @field_validator("key_field", "timestamp_field", "label_field")
    @classmethod
    def _one_path(cls, value: str | None) -> str | None:
        return _checked_path(value)

    @field_validator("key_fields", "value_fields", "filter")
    @classmethod
    def _many_paths(cls, value: Any) -> Any:
        for path in value or ():
            path_segments(path)
        return value

    @field_validator("csv_delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if value != "auto" and (len(value) != 1 or value in "\r\n\"" or value.isalnum()):
            raise ValueError(
                f"csv_delimiter {value!r} must be 'auto' or one character (not a letter, digit, "
                "quote or line break), e.g. ';' or '\\t'"
            )
        return value

    @field_validator("key_fields")
    @classmethod
    def _no_tokens(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        tokens = [path for path in value or () if path in (MESSAGE_KEY, SINGLE_SERIES)]
        if tokens:
            raise ValueError(
                f"key_fields names record fields, not {tokens[0]!r}; give that as key_field "
                "instead (and no key_fields)"
            )
        return value

    @model_validator(mode="after")
    def _distinct_fields(self) -> InputConfig:
        if len(set(self.value_fields)) != len(self.value_fields):
            raise ValueError("value_fields lists a field twice; list each feature once")
        if self.key_fields is not None and "key_field" in self.model_fields_set:
            raise ValueError(
                "key_field and key_fields are both set; a composite key_fields replaces "
                "key_field, so remove one of them"
            )
        return self

    def __hash__(self) -> int:
        # Frozen sections are hashable, like every other; `filter` is the one dict among fields.
        fields = self.__dict__.items()
        return hash(tuple((k, tuple(v.items()) if type(v) is dict else v) for k, v in fields))

    @property
    def key_paths(self) -> tuple[str, ...] | None:
        """The field paths the key is made of; None when it is the Kafka message key, none at
        all (an empty tuple) when the feed is a single series."""
        if self.key_fields is not None:
            return self.key_fields
        if self.key_field == SINGLE_SERIES:
            return ()
        return None if self.key_field is None else (self.key_field,)


AggregateFunction = Literal["count", "sum", "mean", "min", "max", "distinct"]


class AggregateWhere(_Section):
    """The condition of a conditional count: the raw field at `field` equals `equals`, or one of
    `in`. Values compare as in input.filter (1 equals 1.0, never true; text only text), and an
    event without the field, or with an array or object there, never matches: a field that
    only some events carry (a state logged on TCP only) is then a count of zero, not a reject.
    """

    model_config = ConfigDict(populate_by_name=True)

    field: str = Field(
        description="Field path of the raw field compared (dotted, or a JSON Pointer)."
    )
    equals: FilterValue | None = Field(None, description="The one value counted.")
    in_: tuple[FilterValue, ...] | None = Field(
        None, alias="in", min_length=1, description="The values counted (any of them)."
    )

    @field_validator("field")
    @classmethod
    def _path(cls, value: str) -> str:
        path_segments(value)
        return value

    @model_validator(mode="after")
    def _one_test(self) -> AggregateWhere:
        if (self.equals is None) == (self.in_ is None):
            raise ValueError(
                f"where on {self.field!r}: give exactly one of `equals = value` or "
                "`in = [values]`"
            )
        return self

    @property
    def values(self) -> tuple[FilterValue, ...]:
        """The values an event's field is compared with, whichever way they were written."""
        if self.in_ is not None:
            return self.in_
        assert self.equals is not None  # _one_test
        return (self.equals,)

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the test given, under its TOML name (`in`, not `in_`), so a dump loads back."""
        dumped = handler(self)
        tests = {"equals": dumped.get("equals"), "in": dumped.get("in_", dumped.get("in"))}
        return {"field": dumped["field"], **{k: v for k, v in tests.items() if v is not None}}


class AggregateFeature(_Section):
    """One bucket feature: an aggregation over a raw field of the key's events in the bucket."""

    name: str = Field(min_length=1, description="Feature name, as listed in input.value_fields.")
    agg: AggregateFunction = Field(
        description="count: events; sum/mean/min/max: of a numeric field; distinct: approximate "
        "number of distinct non-null values of a field (HyperLogLog)."
    )
    field: str | None = Field(
        None,
        description="Field path of the raw field (dotted, or a JSON Pointer starting with '/'); "
        "leave unset for count, set for the rest.",
    )

    where: AggregateWhere | None = Field(
        None,
        description="count only: count just the events whose field matches, e.g. "
        '{ field = "conn_state", in = ["S0", "REJ"] } or { field = "proto", equals = "udp" }; '
        "an event without the field is not counted (and not refused).",
    )

    @field_validator("field")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return _checked_path(value)

    @model_validator(mode="after")
    def _field_matches_agg(self) -> AggregateFeature:
        if self.agg == "count" and self.field is not None:
            raise ValueError(
                f"feature {self.name!r}: count counts events; remove `field` (to count only "
                "some events, use `where = { field = ..., in = [...] }`)"
            )
        if self.agg != "count" and self.field is None:
            raise ValueError(f"feature {self.name!r}: {self.agg} needs the raw `field` it reads")
        if self.agg != "count" and self.where is not None:
            raise ValueError(
                f"feature {self.name!r}: `where` only conditions a count, not {self.agg}"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_absent_where(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An unconditional feature dumps as before `where` existed, so the model fingerprint
        (a hash of this dump) of every model trained without it stays the same."""
        dumped = handler(self)
        if self.where is None:
            dumped.pop("where", None)
        return dumped


class AggregateConfig(_Section):
    """input.mode = "aggregate": raw events become per-key feature vectors over event-time buckets.

    Keys and event times come from input.key_field / input.timestamp_field, decoded and refused
    exactly as in events mode.
    """

    bucket_width_s: float = Field(
        10.0, ge=0.001, description="Bucket width; buckets are aligned to multiples of it."
    )
    allowed_lateness_s: float = Field(
        5.0,
        ge=0,
        description="Watermark = latest event time seen minus this; a bucket closes when the "
        "watermark passes its end. Keep input.max_future_s tight: one event far in the future "
        "moves the watermark and makes everything after it late.",
    )
    late_policy: Literal["dead_letter", "drop"] = Field(
        "dead_letter",
        description="What happens to an event whose bucket already closed: sent to the dead-letter "
        "topic with reason 'late', or dropped; counted either way.",
    )
    idle_timeout_s: float = Field(
        300.0,
        ge=0,
        description="A quiet key yields empty buckets (counts 0) this long after its last "
        "non-empty bucket, so silence reaches the model; then its state is freed.",
    )
    distinct_precision: int = Field(
        6,
        ge=4,
        le=12,
        description="HyperLogLog precision p: 2**p one-byte registers per distinct feature and "
        "open bucket; relative error about 1.04 / sqrt(2**p) (13% at 6).",
    )
    features: tuple[AggregateFeature, ...] = Field(
        (AggregateFeature(name="events", agg="count"),),
        min_length=1,
        description="The bucket features, in model order; their names go in input.value_fields.",
    )

    @model_validator(mode="after")
    def _distinct_names(self) -> AggregateConfig:
        names = [feature.name for feature in self.features]
        if len(set(names)) != len(names):
            raise ValueError("aggregate.features names a feature twice; give each a unique name")
        return self


class WindowConfig(_Section):
    """Per-key sliding windows kept in the ring buffer."""

    size: int = Field(32, ge=2, le=4096, description="Events per window (W).")
    stride: int = Field(
        8, ge=1, description="A key's window is scored every `stride` new events once full."
    )
    max_keys: int = Field(
        100_000, ge=1, description="Keys tracked at once; the least recently seen are evicted."
    )
    idle_ttl_s: float = Field(
        3600.0, gt=0, description="A key silent this long (event time) is freed."
    )
    initial_capacity: int = Field(1024, ge=1, description="Slots preallocated; grows as needed.")
    score_steps: int = Field(
        0,
        ge=0,
        description="How many of a window's newest events its score judges; the older ones are "
        "context the model reconstructs from. 0 = all `size`. A few (e.g. 2 of 8 buckets) end "
        "an episode as soon as its anomaly is no longer new, but a lone burst in a lumpy feed "
        "is then no longer averaged away (docs/detection.md, Scoring the newest steps).",
    )

    @model_validator(mode="after")
    def _score_steps_within_the_window(self) -> WindowConfig:
        if self.score_steps > self.size:
            raise ValueError(
                f"score_steps ({self.score_steps}) must not exceed size ({self.size}); "
                "0 scores the whole window"
            )
        return self


class NormalizeConfig(_Section):
    """Per-key running mean/variance: every key scaled by its own statistics, whatever its scale."""

    warmup: int = Field(
        64,
        ge=0,
        description="Events a key needs before its windows are scored: younger statistics "
        "would normalise its first windows unlike anything the model was trained on. During "
        "these a key's statistics learn freely; after them updates are clipped (clip_sigma).",
    )
    prior_weight: float = Field(
        0.0,
        ge=0,
        description="Pseudo-count of the training statistics (pooled over all keys) in a key's "
        "running estimate. 0 = each key on its own statistics only; a prior pools scales "
        "across keys and flattens keys much smaller than the pool.",
    )
    horizon: int = Field(
        10_000, ge=2, description="Effective memory of the running statistics, in events."
    )
    clip_sigma: float = Field(
        4.0,
        ge=0,
        description="Once a key is warm, each event's deviation from its mean is clipped at this "
        "many of its std before it is folded into the statistics, so a long anomaly is not "
        "absorbed into what counts as normal; a lasting change is still learnt, slowly. 0 "
        "disables.",
    )
    min_std: float = Field(
        1e-6, gt=0, description="Absolute floor on a key's std, in raw units (against 0/0)."
    )
    z_limit: float = Field(
        10.0,
        ge=0,
        description="Normalised window values are clipped to +-z_limit before the model sees "
        "them: a key constant in its warm-up has a tiny std, and a step off that constant "
        "would otherwise reach the model (and the calibration) as millions. 0 disables.",
    )
    min_relative_std: float = Field(
        1e-3,
        ge=0,
        description="Floor on a key's std relative to its level: at least this x |mean|, so a "
        "key that is constant in its warm-up is not scaled by the absolute floor alone; "
        "relative, so keys of any scale are treated alike.",
    )

    @model_validator(mode="after")
    def _warmup_within_horizon(self) -> NormalizeConfig:
        if self.warmup > self.horizon:
            raise ValueError("warmup exceeds horizon; a key's count never gets past horizon")
        return self


class ModelConfig(_Section):
    """The LSTM autoencoder and where it runs."""

    path: Path | None = Field(None, description="Model artefact directory written by `train`.")
    hidden_size: int = Field(32, ge=1)
    num_layers: int = Field(1, ge=1, le=8)
    latent_size: int = Field(8, ge=1)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks cuda if any.")
    batch_size: int = Field(2048, ge=1, description="Windows per inference micro-batch.")
    cpu_threads: int = Field(
        1,
        ge=0,
        description="Torch threads while scoring on CPU; 0 keeps torch's default (one per core). "
        "One is fastest for this small LSTM: its matrices are too small to split across cores, "
        "the other cores serve Kafka I/O and decoding, and OpenMP threads spin-waiting for a "
        "busy core slow scoring down several-fold.",
    )
    device_resident: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Keep the window ring's values on the model's device, cut and normalise "
        "windows there and score them without a host->device copy of every window (only each "
        "batch's new values cross). 'auto' = on when the device is cuda, off on the CPU, where "
        "numpy is faster; 'on' with the CPU runs the same torch code path there (tests do).",
    )
    cuda_graph: bool = Field(
        True,
        description="On CUDA, capture the scoring pass once as a CUDA graph at the fixed shape "
        "[batch_size, W, F] and replay it per micro-batch; falls back to eager (logged) if "
        "capture fails. Ignored on the CPU.",
    )


class TrainConfig(_Section):
    """Fitting the model on presumed-normal data."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    patience: int = Field(4, ge=1, description="Epochs without validation gain before stopping.")
    stride: int = Field(1, ge=1, description="Stride between training windows.")
    max_windows: int = Field(200_000, ge=1, description="Cap on training windows (sampled).")
    seed: int = 0
    trim_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of each training batch's worst-reconstructed windows left out of its "
        "loss: training data is only mostly normal, and a model fitted to its few anomalies "
        "reconstructs them, and their like later, as normal. 0 fits every window.",
    )
    average_epochs: float = Field(
        1.0,
        ge=0,
        description="The weights validated, calibrated and saved are an exponential moving "
        "average of the trained ones over about this many epochs of steps: the last steps' "
        "weights swing with the batches they saw last, and the epoch picked by validation with "
        "them. 0 keeps the trained weights as they are.",
    )
    calibration_quantile: float = Field(
        0.995, gt=0.5, lt=1, description="Validation-score quantile used as the global threshold."
    )


class ThresholdConfig(_Section):
    """Adaptive per-key threshold on the score: each key judged by its own recent scores."""

    alpha: float = Field(0.02, gt=0, le=1, description="EWMA weight of a new score.")
    sensitivity: float = Field(
        8.0,
        gt=0,
        description="Threshold = mean + sensitivity x std of the key's recent scores. Scores are "
        "heavy-tailed (squared errors), so the band is wide: 8 was chosen on SMAP and holds on "
        "MSL and SKAB (README, Detection quality).",
    )
    warmup: int = Field(
        64, ge=1, description="Scores a key needs before its own threshold replaces the global one."
    )
    absorb_sigma: float = Field(
        0.0,
        ge=0,
        description="Once a key is warm, a score under its threshold but above mean + "
        "absorb_sigma x std is learnt as that bound, so an anomaly whose scores ramp up cannot "
        "widen the band ahead of itself. 0 (the default: on SMAP it did not help) learns every "
        "score under the threshold whole.",
    )
    global_factor: float = Field(
        1.0, gt=0, description="Multiplier on the calibrated global threshold used during warm-up."
    )
    floor_factor: float = Field(
        0.0,
        ge=0,
        description="A key's own threshold never drops below this x the calibrated global one. "
        "0 (the default) leaves each key to its own band: the global threshold is set by the "
        "noisiest keys, and a floor from it silences every key that is quiet by nature.",
    )
    flat_factor: float = Field(
        2.0,
        ge=0,
        description="A feature that repeats one value for this many times the longest run of "
        "equal values its key completed before (and for at least one window) is a flat line: "
        "its windows exceed whatever their score, since a stuck sensor is reconstructed too "
        "well to score high. A run that stays flat for as many readings as the threshold "
        "warm-up spans (warmup x window.stride) is the key's new normal, and learnt. Judged on "
        "readings (input.mode = 'events') only: bucket counts repeat by nature. 0 disables.",
    )
    flat_spread: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="A feature whose spread (standard deviation) within a window is under this "
        "share of the smallest spread its key's windows had before, two windows in a row, is "
        "near-flat and counts as a flat line: a sensor stuck with a little noise, a signal that "
        "lost its swing. Judged once the key has `warmup` windows; readings only, as "
        "flat_factor. 0 disables.",
    )


class EpisodeConfig(_Section):
    """Turning per-window exceedances into one open and one resolve alert."""

    min_consecutive: int = Field(2, ge=1, description="Exceeding windows needed to open.")
    cooldown: int = Field(
        16,
        ge=1,
        description="Normal windows needed to resolve: long enough that one incident with calm "
        "spells inside stays one episode.",
    )
    top_features: int = Field(3, ge=1, description="Contributing features named in an alert.")
    alert_new_keys: bool = Field(
        False,
        description="Open an episode (reason 'new_key') at the first event of a key the model "
        "was not trained on, each time one comes that the detector does not hold (never seen, "
        "or forgotten: silent past window.idle_ttl_s, or pushed out at window.max_keys); it "
        "resolves after `cooldown` calm windows of the key. News in a network feed (a new "
        "source address), noise where keys come and go. Needs a model that records its "
        "training keys (trained by this version).",
    )


# librdkafka size properties the service derives from its own settings, and from which.
_SIZE_PROPERTIES: dict[str, str] = {
    "message.max.bytes": "max_message_bytes",
    "batch.size": "max_message_bytes",
    "fetch.max.bytes": "fetch_max_bytes",
    "receive.message.max.bytes": "fetch_max_bytes",
}


class KafkaConfig(_Section):
    """The service's broker connection; `extra` passes straight through to librdkafka."""

    bootstrap_servers: str = "127.0.0.1:9092"
    input_topics: tuple[str, ...] = ("events",)
    alert_topic: str = "alerts"
    dead_letter_topic: str = "events.dlq"
    feedback_topic: str | None = Field(
        None,
        min_length=1,
        description="Operator feedback (false/true positive, mute, sensitivity; README, "
        "'Operator feedback'), read whole by every replica from its start; null turns feedback "
        "off. Give the topic unlimited retention (retention.ms = -1): it is the feedback's record.",
    )
    group_id: str = "stream-detector"
    batch_size: int = Field(5000, ge=1, description="Messages per consume() call.")
    batch_timeout_s: float = Field(
        0.02,
        gt=0,
        description="Longest wait for a batch to fill. A backlog fills batch_size at once; below "
        "full speed an event waits at most this long for its batch, so it bounds added latency.",
    )
    max_in_flight: int = Field(100_000, ge=1, description="Unacknowledged produced messages.")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    partition_assignment_strategy: str = "cooperative-sticky"
    session_timeout_ms: int = Field(10_000, ge=1000)
    shutdown_timeout_s: float = Field(30.0, gt=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    max_message_bytes: int = Field(
        1_000_000,
        ge=16_384,
        description="Largest message the service produces (the producer's message.max.bytes and "
        "batch.size). A dead letter that would be larger keeps a truncated value, with headers "
        "giving the original's size and sha256. The dead-letter topic's max.message.bytes must "
        "allow this much; the service checks at start where the broker reports it.",
    )
    fetch_max_bytes: int = Field(
        52_428_800,
        ge=1_000_000,
        description="Most bytes one fetch returns (fetch.max.bytes; receive.message.max.bytes is "
        "set just above it), and so the largest input record the consumer can read; the input "
        "topics' max.message.bytes must not exceed it.",
    )
    extra: dict[str, str] = Field(default_factory=dict, description="Raw librdkafka settings.")

    @field_validator("extra")
    @classmethod
    def _sizes_are_typed_settings(cls, extra: dict[str, str]) -> dict[str, str]:
        # The size limits are checked against each other and against the topics; a raw
        # librdkafka value would bypass those checks.
        for name, setting in _SIZE_PROPERTIES.items():
            if name in extra:
                raise ValueError(f"{name!r} is set by kafka.{setting}; set that instead of extra")
        return extra


class ObservabilityConfig(_Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    http_port: int | None = Field(
        9308, ge=0, le=65535, description="/metrics, /healthz, /readyz; null disables."
    )


class StateConfig(_Section):
    """Checkpoints of per-key engine state, so a restart or rebalance resumes warm (docs/state.md)."""

    store: Literal["local", "kafka", "none"] = Field(
        "local",
        description="'local': files under `dir`, for one instance (or several sharing a volume). "
        "'kafka': the changelog topic, so any instance assigned a partition can restore it. "
        "'none': every start and rebalance is cold.",
    )
    dir: Path = Field(
        Path("~/.local/state/stream-detector"),
        description="Directory of the local store; a sub-directory per consumer group.",
    )
    checkpoint_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often each owned partition's state is checkpointed (also on revoke and "
        "shutdown); each checkpoint first waits for all output so far to be acknowledged.",
    )
    changelog_topic: str = Field(
        "stream-detector-state",
        min_length=1,
        description="The Kafka store's topic; create it before starting (no compaction needed).",
    )


class DriftConfig(_Section):
    """How far the live scores have moved from training, and when that calls for retraining.

    Monitoring only: nothing here changes a score, a threshold or an alert (README, "Drift")."""

    half_life_windows: int = Field(
        20_000,
        ge=1,
        description="Scored windows after which a window's weight in the drift figures has "
        "halved: the figures follow the recent stream (about 1.44 x this many windows) rather "
        "than everything since start.",
    )
    log_interval_s: float = Field(
        60.0,
        gt=0,
        description="How often the service logs one `drift` line with every figure and whether "
        "retraining is due; the new-key share is taken over this interval.",
    )
    psi_bound: float = Field(
        0.25,
        gt=0,
        description="Retraining is due when the population stability index of the scores "
        "against the training calibration exceeds this (0.1: a shift worth watching; 0.25: a "
        "large one).",
    )
    min_windows: int = Field(
        1000,
        ge=1,
        description="Weight of scored windows the horizon must hold before the PSI is reported "
        "and may make retraining due: fewer make it noise.",
    )
    max_model_age_days: float = Field(
        0.0,
        ge=0,
        description="Retraining is due once the model (its artefact's created_at) is older "
        "than this; 0 turns the age rule off.",
    )


class FeedbackConfig(_Section):
    """How operator feedback moves a key's threshold, and the bounds a feedback event must keep.

    Every effect starts at an event time the feedback names, so a replay with the same feedback
    (`evaluate --feedback FILE`) makes the same decisions as the service (README, "Operator
    feedback")."""

    false_positive_margin: float = Field(
        1.25,
        gt=1,
        description="A false_positive raises the key's threshold to at least this x the alert's "
        "score, for the model version that scored it: repeats of the same pattern stay under it, "
        "larger departures still alert.",
    )
    false_positive_similarity: float = Field(
        0.9,
        ge=0,
        le=1,
        description="The false_positive floor holds for the windows whose error is spread over "
        "the features like the marked episode's peak (cosine similarity of the shares at least "
        "this; the alert's top_features give the profile): other kinds of anomaly on the key "
        "still alert. 0 = every window of the key; with one feature every window is alike.",
    )
    min_sensitivity: float = Field(
        0.25, gt=0, description="Smallest multiplier a `sensitivity` event may set."
    )
    max_sensitivity: float = Field(
        4.0, gt=0, description="Largest multiplier a `sensitivity` event may set."
    )
    true_positive_hold_s: float = Field(
        3600.0,
        gt=0,
        description="A true_positive on an episode not known to have ended keeps the key's "
        "threshold from learning for this long after the alert (one known to have ended: until "
        "its resolve).",
    )
    max_mute_s: float = Field(
        30 * 86400.0, gt=0, description="Longest span one `mute` event may cover."
    )

    @model_validator(mode="after")
    def _sensitivity_bounds_in_order(self) -> FeedbackConfig:
        if self.min_sensitivity > 1.0 or self.max_sensitivity < 1.0:
            raise ValueError("feedback.min_sensitivity <= 1 <= feedback.max_sensitivity")
        return self


class LifecycleConfig(_Section):
    """The model's lifecycle: a registry of versions, retraining from the stream, shadow scoring
    and promotion (README, "Model lifecycle"). Without a registry the service runs `model.path`
    until it is restarted with another."""

    registry_dir: Path | None = Field(
        None,
        description="A directory (local or a shared volume) holding the model versions, their "
        "reports and which one is active. The source of truth every replica follows.",
    )
    registry_topic: str | None = Field(
        None,
        min_length=1,
        description="A Kafka topic holding the same, for deployments with nothing but the "
        "cluster in common (unlimited retention); instead of registry_dir.",
    )
    poll_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often each replica checks the registry's active version, and swaps "
        "its model between two batches when it changed.",
    )
    retrain: bool = Field(
        False,
        description="Retrain inside `run` when drift says retraining is due (drift.psi_bound, "
        "drift.max_model_age_days); needs a registry. Only the replica owning partition 0 of the "
        "first input topic retrains, on the events of its own partitions.",
    )
    retrain_max_events: int = Field(
        200_000,
        ge=1000,
        description="Recent events kept for retraining inside `run` (memory: about 16 + 8 x "
        "features bytes each, plus keys).",
    )
    retrain_min_events: int = Field(
        5_000, ge=100, description="Fewer recent events than this are not retrained on."
    )
    retrain_cooldown_s: float = Field(
        3600.0,
        ge=0,
        description="Least time between two retrains started by `run` (wall clock).",
    )
    shadow_windows: int = Field(
        5_000,
        ge=1,
        description="Windows a candidate scores beside the active model, publishing nothing, "
        "before its shadow report and verdict.",
    )
    auto_promote: bool = Field(
        True,
        description="Promote a candidate whose shadow verdict passes; false leaves it for "
        "`stream-detector models promote`.",
    )
    promote_max_alert_ratio: float = Field(
        1.0,
        ge=0,
        description="A candidate passes its shadow period when it opened at most this x the "
        "active model's episodes and its scores sit closer to its own calibration than the "
        "active model's to its (lower score PSI).",
    )

    @model_validator(mode="after")
    def _one_registry(self) -> LifecycleConfig:
        if self.registry_dir is not None and self.registry_topic is not None:
            raise ValueError("set lifecycle.registry_dir or lifecycle.registry_topic, not both")
        if self.retrain and self.registry_dir is None and self.registry_topic is None:
            raise ValueError(
                "lifecycle.retrain needs a registry to put candidates in: set "
                "lifecycle.registry_dir (or lifecycle.registry_topic)"
            )
        return self


# What a forward.link_template may name: each is filled in, URL-quoted, from the alert posted.
LINK_FIELDS: Final = ("alert_id", "episode_id", "key")
ALERTMANAGER_ALERTS_PATH: Final = "/api/v2/alerts"


class ForwardConfig(_Section):
    """`stream-detector forward alertmanager`: the alert topic's episodes as Alertmanager alerts.

    The forwarder reads kafka.alert_topic (with the [kafka] connection settings) in a consumer
    group of its own, so it never moves the detector's offsets; README.md, "Forwarding alerts to
    Alertmanager", has the mapping.
    """

    url: str | None = Field(
        None,
        description="Alertmanager's base URL, e.g. http://alertmanager:9093 (with its route "
        f"prefix, if any); alerts are posted to {ALERTMANAGER_ALERTS_PATH} under it. The "
        "command's --url flag overrides it.",
    )
    group_id: str = Field(
        "stream-detector-forward",
        min_length=1,
        description="The forwarder's consumer group on kafka.alert_topic: its committed offsets "
        "say how far Alertmanager has accepted everything. One group per Alertmanager that is "
        "posted to separately.",
    )
    alertname: str = Field(
        "StreamDetectorAnomaly",
        min_length=1,
        description="The alertname label of every alert, what Alertmanager routes are matched on.",
    )
    resend_interval_s: float = Field(
        60.0,
        gt=0,
        description="Firing alerts are posted again this often, each valid for 4 intervals "
        "(endsAt), as Prometheus does: Alertmanager keeps alerts in memory only, so a restarted "
        "one has them back within one interval, and one that hears nothing more resolves them.",
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for Alertmanager to answer one POST."
    )
    retry_initial_s: float = Field(
        0.5,
        gt=0,
        description="First wait before posting again while Alertmanager is unreachable or "
        "answers 5xx; doubled after each failure up to retry_max_s, with jitter.",
    )
    retry_max_s: float = Field(
        30.0, gt=0, description="Longest wait between two attempts at one POST."
    )
    link_template: str | None = Field(
        None,
        description="Each alert's generatorURL (the link Alertmanager and its notifications "
        "show): a URL naming {alert_id}, {episode_id} or {key}, e.g. "
        "\"https://grafana.example/d/sd?var-alert={alert_id}\"; unset: no link.",
    )
    rebuild_timeout_s: float = Field(
        60.0,
        gt=0,
        description="On assignment, the longest time to read a partition back up to the group's "
        "committed offset to learn which episodes are still open; what is not read by then "
        "is not refreshed, and Alertmanager lets it expire.",
    )

    @field_validator("url")
    @classmethod
    def _an_http_base_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("give Alertmanager's http:// or https:// URL, e.g. http://am:9093")
        if parts.query or parts.fragment:
            raise ValueError("give Alertmanager's base URL, without a query or fragment")
        base = url.rstrip("/")
        if base.endswith(ALERTMANAGER_ALERTS_PATH):
            raise ValueError(
                f"give Alertmanager's base URL (e.g. http://am:9093); {ALERTMANAGER_ALERTS_PATH} "
                "is added to it"
            )
        return base

    @field_validator("link_template")
    @classmethod
    def _names_only_alert_fields(cls, template: str | None) -> str | None:
        if template is None:
            return None
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(template)]
        except ValueError as exc:  # an unmatched brace
            raise ValueError(f"link_template is not a valid template: {exc}") from None
        unknown = sorted({name for name in fields if name is not None} - set(LINK_FIELDS))
        if unknown:
            raise ValueError(
                f"link_template names {', '.join('{' + name + '}' for name in unknown)}; it may "
                f"name only {', '.join('{' + name + '}' for name in LINK_FIELDS)} ({{{{ and }}}} "
                "for literal braces)"
            )
        return template

    @model_validator(mode="after")
    def _retry_bounds_in_order(self) -> ForwardConfig:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(
                f"forward.retry_max_s = {self.retry_max_s} is below forward.retry_initial_s = "
                f"{self.retry_initial_s}; the longest wait must be at least the first"
            )
        return self


class Settings(BaseSettings):
    """The whole configuration; see README.md for an annotated example file."""

    model_config = SettingsConfigDict(
        env_prefix="SD_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    input: InputConfig = InputConfig()
    aggregate: AggregateConfig = AggregateConfig()
    window: WindowConfig = WindowConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    threshold: ThresholdConfig = ThresholdConfig()
    episodes: EpisodeConfig = EpisodeConfig()
    kafka: KafkaConfig = KafkaConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    state: StateConfig = StateConfig()
    forward: ForwardConfig = ForwardConfig()
    drift: DriftConfig = DriftConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()

    @model_validator(mode="after")
    def _aggregate_features_are_the_model_features(self) -> Settings:
        names = tuple(feature.name for feature in self.aggregate.features)
        if self.input.mode == "aggregate" and self.input.value_fields != names:
            raise ValueError(
                "input.mode is 'aggregate', so the model's features are the bucket features: set "
                f"input.value_fields = {list(names)} (aggregate.features' names, in order)"
            )
        return self

    @model_validator(mode="after")
    def _input_limit_can_be_fetched(self) -> Settings:
        # A record under the input limit that the consumer cannot fetch would stall its partition.
        largest = self.kafka.fetch_max_bytes - RECORD_FRAMING_BYTES
        if self.input.max_message_bytes > largest:
            raise ValueError(
                f"input.max_message_bytes = {self.input.max_message_bytes} cannot be fetched with "
                f"kafka.fetch_max_bytes = {self.kafka.fetch_max_bytes}: lower the first to at "
                f"most {largest} or raise kafka.fetch_max_bytes"
            )
        return self

    @model_validator(mode="after")
    def _exactly_once_checkpoints_can_join_the_transaction(self) -> Settings:
        # The checkpoint is written in each transaction (docs/state.md); a file cannot be.
        if self.kafka.processing_guarantee == "exactly_once" and self.state.store == "local":
            raise ValueError(
                "kafka.processing_guarantee = 'exactly_once' cannot be used with state.store = "
                "'local': a local directory cannot join the Kafka transaction its checkpoints "
                "must be written in; set state.store = 'kafka' (checkpoints in the changelog "
                "topic, in the transaction) or state.store = 'none' (no checkpoints)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges file < environment < CLI itself and passes the result as init
        # kwargs, so the environment must not be applied a second time over the CLI flags.
        return (init_settings,)

    def model_settings(self) -> dict[str, Any]:
        """Every setting that changes what a model sees, by dotted name, as JSON values.

        A model is only valid with the settings it was trained under, so these are recorded in
        its artefact and compared on load. They are the features and architecture, the
        per-key normalisation (training windows are normalised, and skipped during warm-up, by
        the serving code) and, in aggregate mode, everything that decides a bucket's values.
        window.score_steps is recorded when it scores part of the window: the calibrated
        threshold is in the units of the scores it makes, and models trained before it existed
        scored whole windows (UNRECORDED_MODEL_SETTINGS says what its absence means).
        Left out, because they pick which windows are scored or trained on but not what a window
        holds: window.stride and train.stride (the normaliser sees every event whatever the
        stride), max_keys / idle_ttl_s, the key and time mapping (where a file or a topic keeps
        the same data), aggregate.late_policy (a late event is left out either way), threshold.*
        and episodes.* (applied to scores after the model).
        """
        relevant: dict[str, Any] = {
            "input.mode": self.input.mode,
            "input.value_fields": list(self.input.value_fields),
            "window.size": self.window.size,
            "model.hidden_size": self.model.hidden_size,
            "model.num_layers": self.model.num_layers,
            "model.latent_size": self.model.latent_size,
        }
        if 0 < self.window.score_steps < self.window.size:
            relevant["window.score_steps"] = self.window.score_steps
        relevant.update(
            (f"normalize.{name}", value)
            for name, value in self.normalize.model_dump(mode="json").items()
        )
        if self.input.mode == "aggregate":
            bucketing = self.aggregate.model_dump(mode="json", exclude={"late_policy"})
            relevant.update((f"aggregate.{name}", value) for name, value in bucketing.items())
        return relevant

    def model_fingerprint(self) -> str:
        """Hash of `model_settings`; a mismatch means retrain."""
        return fingerprint_of(self.model_settings())


def fingerprint_of(model_settings: dict[str, Any]) -> str:
    """The short hash of a model_settings mapping, as stored beside it in a model artefact."""
    canonical = orjson.dumps(model_settings, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section: how every layer of settings (file, environment,
    flags, a scenario's own sections) overrides the one below without erasing its siblings."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_overrides() -> dict[str, Any]:
    """The SD_* environment as a nested dict, parsed by pydantic-settings' own env source."""

    return EnvSettingsSource(Settings)()


def _describe(error: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown setting; check the spelling against README.md's example file"
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f"; got {given!r}"
        # A section's own check (across its fields) names them in its message.
        section_check = len(item["loc"]) == 1 and item["type"] == "value_error"
        hint = ""
        if item["loc"] and not section_check:  # a model-level error has no field to point at
            env_name = "SD_" + "__".join(str(part).upper() for part in item["loc"])
            hint = f" (set it in the TOML file under [{'.'.join(map(str, item['loc'][:-1])) or '.'}]"
            hint += f" or with {env_name})"
        lines.append(f"  {field}: {message}{shown}{hint}")
    return "\n".join(lines)


def load_settings(
    path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Settings:
    """Build validated settings from an optional TOML file, the environment and CLI overrides.

    ``overrides`` is nested like the file (``{"kafka": {"group_id": "x"}}``) and wins over all;
    ``base`` (a named preset) lies beneath the file. Raises ConfigError with a readable message
    on any problem.
    """
    data: dict[str, Any] = {}
    if path is not None:
        file_path = Path(path)
        try:
            data = tomllib.loads(file_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file_path} does not exist; pass an existing --config")
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file_path} is not valid TOML: {exc}") from None
    try:
        env = _env_overrides()
    except Exception as exc:  # pydantic-settings reports JSON errors in complex env values
        raise ConfigError(f"invalid SD_* environment variable: {exc}") from None
    merged = deep_merge(deep_merge(deep_merge(base or {}, data), env), overrides or {})
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """Plain JSON-able view, secrets masked, for logs and artefact metadata."""
    return settings.model_dump(mode="json")
