"""Raw records -> EventBatch + rejects: the only place untrusted input is interpreted.

Both entry points (Kafka payloads, file columns) first reduce their input to one raw Python value
per record and field, then hand those lists to a single validator. A record therefore means the
same thing whichever way it arrived, and the rules live in one place. Validation runs column-wise
in numpy; Python touches individual records only to describe rejects, which are rare.

Decoding never raises because of the data: every malformed record becomes a `Reject`. It does
raise ValueError when the *caller* breaks the contract (mismatched lengths, Kafka keys or broker
timestamps required by the config but not passed), because that is a bug, not bad input.
"""

from __future__ import annotations

import json
import math
import operator
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import repeat
from typing import Any, Final, Protocol

import numpy as np
import orjson
import structlog

from stream_detector.config import (
    SINGLE_SERIES,
    SINGLE_SERIES_KEY,
    InputConfig,
    column_name,
    path_segments,
)
from stream_detector.engine.types import Decoded, EventBatch, Reject

log = structlog.get_logger(__name__)

# Status of one raw value, computed per column without a Python-level loop.
_OK: Final = 0  # a number (values, timestamps) or text (keys)
_MISSING: Final = 1
_OTHER: Final = 2
_EMPTY: Final = 3  # an empty key string: as useless as a missing key, but described differently
_INTEGER: Final = 4  # an integer key, valid once turned into text

# bool is absent on purpose: a flag is not a measurement, and True silently becoming 1.0 hides
# producer bugs. numpy scalars are included because columnar callers hand them over.
_NUMBER_TYPES: Final = (int, float, np.float64, np.float32, np.float16) + tuple(
    np.dtype(code).type for code in "bhilqBHILQ"
)
_VALUE_STATUS: Final[dict[type, int]] = {
    **dict.fromkeys(_NUMBER_TYPES, _OK),
    type(None): _MISSING,
}
_PLAIN_NUMBERS: Final = frozenset({int, float})
_KEY_STATUS: Final[dict[type, int]] = {str: _OK, int: _INTEGER, type(None): _MISSING}

_BYTES_TYPES: Final = (bytes, bytearray, memoryview)
# `auto` unit: |x| below 1e11 is seconds (good until year 5138), then ms, us, ns.
_AUTO_BOUNDS: Final = np.array([1e11, 1e14, 1e17])
_UNIT_DIVISOR: Final = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
_TIME_EXPECTED: Final = {
    "auto": "a number or an RFC 3339 time",
    "rfc3339": "an RFC 3339 time",
    "s": "a number of seconds",
    "ms": "a number of milliseconds",
    "us": "a number of microseconds",
    "ns": "a number of nanoseconds",
}
_TRUE_WORDS: Final = frozenset({"1", "true", "yes"})
_SHOWN_CHARS: Final = 60
# What a filter value equals: a bool only a JSON bool, a number any JSON number (1 == 1.0), since
# Python's True == 1 would let `"/ok" = true` match a count of 1.
_FILTER_TYPES: Final[dict[type, frozenset[type]]] = {
    bool: frozenset({bool}),
    int: frozenset({int, float}),
    float: frozenset({int, float}),
    str: frozenset({str}),
}
_COMPOSITE_ESCAPES: Final = str.maketrans({"\\": "\\\\", "|": "\\|"})
_JSON_KINDS: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class _RawRecords:
    """Records reduced to one raw value per field, aligned with `index`, before validation."""

    index: np.ndarray  # int64, position of each record in the caller's input
    keys: list[Sequence[Any]]  # one column per key component (one, unless input.key_fields)
    ts: Sequence[Any] | np.ndarray
    ts_unit: str
    values: list[Sequence[Any] | np.ndarray]
    labels: Sequence[Any] | np.ndarray | None


class _Verdicts:
    """First failure per record wins, so each record gets exactly one reject however bad it is."""

    def __init__(self, index: np.ndarray, rejects: list[Reject]) -> None:
        self.index = index
        self.bad = np.zeros(index.shape[0], dtype=bool)
        self.rejects = rejects

    def refuse(
        self, mask: np.ndarray, reason: str, template: str, *, raw: Any, **fields: object
    ) -> None:
        """Reject the still-good records in `mask`; `template` gets `value` (the shown raw value)
        and `fields` as format arguments, so user text never becomes part of a format string."""
        hit = np.flatnonzero(mask & ~self.bad)
        if hit.size == 0:
            return
        self.bad[hit] = True
        self.rejects.extend(
            Reject(int(self.index[i]), reason, template.format(value=_show(raw[i]), **fields))
            for i in hit.tolist()
        )


class RecordDecoder(Protocol):
    """What the detector, the file sources and training need of a decoder: records in, events out.

    Two implement it: `Decoder` (one event per record, stateless) and the aggregating decoder of
    input.mode = "aggregate" (closed per-key buckets out, open buckets held between calls).
    """

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    @property
    def csv_delimiter(self) -> str:
        """input.csv_delimiter, which the file sources split CSV rows by."""
        ...

    def decode_messages(
        self,
        payloads: Sequence[bytes],
        keys: Sequence[bytes | None] | None = None,
        broker_ts_ms: Sequence[int] | np.ndarray | None = None,
        streams: Sequence[int] | np.ndarray | None = None,
    ) -> Decoded:
        """One consumed batch (Kafka messages, or JSON lines of a file)."""
        ...

    def decode_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Decoded:
        """A table of records (a CSV file), a column per field."""
        ...

    def flush(self) -> Decoded:
        """The input has ended: whatever the decoder still holds, as events."""
        ...


class Decoder:
    """Turns Kafka messages or file columns into an EventBatch under one InputConfig (a
    RecordDecoder)."""

    def __init__(self, config: InputConfig, now: Callable[[], float] = time.time) -> None:
        self._config = config
        self._now = now
        # A random string between payloads in the joined fast-path parse: a payload can only
        # shift the element boundaries by producing this string itself, which it cannot guess.
        self._sentinel = "~" + secrets.token_hex(16)
        self._separator = b',"' + self._sentinel.encode() + b'",'
        # Paths are parsed here, once, so decoding a batch only walks ready-made key lists.
        self._value_paths = [path_segments(field) for field in config.value_fields]
        self._value_labels = [f"field '{field}'" for field in config.value_fields]
        key_paths = config.key_paths or ()
        self._single_series = config.key_paths == ()
        self._key_paths = [path_segments(field) for field in key_paths]
        self._key_labels = [f"key field '{field}'" for field in key_paths]
        ts_field, label = config.timestamp_field, config.label_field
        self._ts_path = None if ts_field is None else path_segments(ts_field)
        self._label_path = None if label is None else path_segments(label)
        self._filter = [
            (path_segments(field), value, _FILTER_TYPES[type(value)])
            for field, value in config.filter.items()
        ]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._config.value_fields

    @property
    def csv_delimiter(self) -> str:
        return self._config.csv_delimiter

    @property
    def _takes_message_keys(self) -> bool:
        """Whether each record's key is its Kafka message key (key_field null)."""
        return not self._key_paths and not self._single_series

    def flush(self) -> Decoded:
        """Nothing: each record is decoded on arrival, none is held."""
        return Decoded(batch=EventBatch.empty(len(self.feature_names)), records=0)

    # -- entry points -----------------------------------------------------------------------

    def decode_messages(
        self,
        payloads: Sequence[bytes],
        keys: Sequence[bytes | None] | None = None,
        broker_ts_ms: Sequence[int] | np.ndarray | None = None,
        streams: Sequence[int] | np.ndarray | None = None,
    ) -> Decoded:
        """Decode one consumed batch; `keys`/`broker_ts_ms` are needed only when the config
        takes the key or the event time from Kafka instead of the payload.

        `streams` (each message's input partition) is accepted so that every decoder has one
        signature, and ignored: a decoded event does not depend on where it came from. The
        aggregating decoder, whose watermark does, uses it.
        """
        return self.decode_with_fields(payloads, keys, broker_ts_ms, ())[0]

    def decode_with_fields(
        self,
        payloads: Sequence[bytes],
        keys: Sequence[bytes | None] | None,
        broker_ts_ms: Sequence[int] | np.ndarray | None,
        fields: Sequence[str],
    ) -> tuple[Decoded, list[np.ndarray]]:
        """decode_messages, plus the raw value at each of `fields` (field paths) for every
        accepted event: object [len(batch)] per field, None where absent, not validated.

        The aggregating decoder reads its distinct-count fields (addresses, ports) this way from
        the same parse instead of parsing every payload a second time; with no fields, nothing
        more is done than in decode_messages.
        """
        cfg = self._config
        n = len(payloads)
        if self._takes_message_keys and (keys is None or len(keys) != n):
            raise ValueError("input.key_field is null, so one Kafka key per payload is required")
        if cfg.timestamp_field is None and (broker_ts_ms is None or len(broker_ts_ms) != n):
            raise ValueError(
                "input.timestamp_field is null, so one broker timestamp per payload is required"
            )
        rejects: list[Reject] = []
        positions, objects = self._parse(payloads, rejects)
        filtered = 0
        if self._filter:
            kept = np.flatnonzero(self._matches([_extract(objects, p) for p, _, _ in self._filter]))
            filtered = len(objects) - kept.size
            positions, objects = positions[kept], [objects[i] for i in kept.tolist()]

        if self._single_series:
            raw_keys = [_single_series_keys(len(positions))]
        elif self._takes_message_keys:
            assert keys is not None
            raw_keys = [_kafka_keys([keys[i] for i in positions.tolist()])]
        else:
            raw_keys = [_extract(objects, path) for path in self._key_paths]
        if self._ts_path is None:
            assert broker_ts_ms is not None
            raw_ts, unit = _broker_times(np.asarray(broker_ts_ms)[positions]), "ms"
        else:
            raw_ts, unit = _extract(objects, self._ts_path), cfg.timestamp_unit
        raw = _RawRecords(
            index=positions,
            keys=raw_keys,
            ts=raw_ts,
            ts_unit=unit,
            values=[_extract(objects, path) for path in self._value_paths],
            labels=None if self._label_path is None else _extract(objects, self._label_path),
        )
        decoded = self._validate(raw, rejects, filtered)
        if not fields:
            return decoded, []
        rows = np.searchsorted(positions, decoded.batch.index)
        extra = [_extract(objects, path_segments(field)) for field in fields]
        # fromiter keeps each value whole: asarray would split equal-length JSON arrays.
        return decoded, [
            np.fromiter(column, dtype=object, count=len(column))[rows] for column in extra
        ]

    def decode_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Decoded:
        """Decode a table whose column names are the configured field paths' `column_name`s.

        Text cells (CSV) that read as numbers become numbers and empty cells become missing, so a
        file and a topic carrying the same data decode identically. An absent column makes every
        row fail on that field rather than raising: a wrong file is a data problem. A filter
        compares these cells too; a filter on true/false also matches the text 'true'/'false'.
        """
        cfg = self._config
        if self._takes_message_keys:
            raise ValueError(
                "input.key_field must name a column to decode a file: the Kafka message key "
                f"only works for the Kafka service (a file with no key column is one series: "
                f"key_field = {SINGLE_SERIES!r})"
            )
        if cfg.timestamp_field is None:
            raise ValueError(
                "input.timestamp_field must name a column to decode a file: the broker's "
                "timestamp only works for the Kafka service"
            )
        lengths = {len(column) for column in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns differ in length: {sorted(lengths)}")
        n = lengths.pop() if lengths else 0

        def column(path: str, text_to_numbers: bool = True) -> Sequence[Any] | np.ndarray:
            name = column_name(path)
            if name not in columns:
                log.warning("decode_column_absent", column=name, columns=sorted(columns))
                return [None] * n
            found = columns[name]
            return _numbers_from_text(found) if text_to_numbers else found

        index = np.arange(n, dtype=np.int64)
        filtered = 0
        if cfg.filter:
            cells = [
                _bools_from_text(column(path)) if type(value) is bool else column(path)
                for path, value in cfg.filter.items()
            ]
            index = np.flatnonzero(self._matches(cells))
            filtered = n - index.size
            if filtered:  # the columns narrowed to the kept rows, whose positions `index` keeps
                rows = index.tolist()
                columns = {name: [found[i] for i in rows] for name, found in columns.items()}
                n = index.size
        label = cfg.label_field
        raw = _RawRecords(
            index=index,
            keys=[_single_series_keys(n)]
            if self._single_series
            else [column(path, text_to_numbers=False) for path in cfg.key_paths or ()],
            ts=column(cfg.timestamp_field),
            ts_unit=cfg.timestamp_unit,
            values=[column(field) for field in cfg.value_fields],
            labels=column(label) if label is not None and column_name(label) in columns else None,
        )
        return self._validate(raw, [], filtered)

    def _matches(self, columns: list[Sequence[Any] | np.ndarray]) -> np.ndarray:
        """bool [N]: which records hold every filter value, one column per filter path.

        map() compares without a Python frame per record; the type check keeps `true` from
        equalling 1 and an absent (None) or nested value from equalling anything.
        """
        n = len(columns[0])
        match = np.ones(n, dtype=bool)
        for (_, value, types), column in zip(self._filter, columns, strict=True):
            if isinstance(column, np.ndarray):
                column = column.tolist()  # numpy scalars are not the JSON types compared with
            same_type = map(types.__contains__, map(type, column))
            equal = map(operator.eq, column, repeat(value))
            match &= np.fromiter(map(operator.and_, same_type, equal), dtype=bool, count=n)
        return match

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self, payloads: Sequence[Any], rejects: list[Reject]) -> tuple[np.ndarray, list]:
        """JSON objects in the batch and their input positions; everything else is rejected."""
        n = len(payloads)
        if set(map(type, payloads)) <= {bytes}:
            sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
        else:
            sizes = np.fromiter(
                (len(p) if isinstance(p, _BYTES_TYPES) else -1 for p in payloads), np.int64, n
            )
        limit = self._config.max_message_bytes
        for i in np.flatnonzero((sizes <= 0) | (sizes > limit)).tolist():
            size = int(sizes[i])
            if size > limit:
                detail = f"message is {size} bytes, over input.max_message_bytes={limit}"
                rejects.append(Reject(i, "oversized", detail))
            elif size == 0:
                rejects.append(Reject(i, "not_json", "payload is empty (a tombstone?)"))
            else:
                kind = "null (a tombstone?)" if payloads[i] is None else type(payloads[i]).__name__
                rejects.append(Reject(i, "not_json", f"payload is {kind}, not bytes"))
        candidates = np.flatnonzero((sizes > 0) & (sizes <= limit))
        chunk = payloads if candidates.size == n else [payloads[i] for i in candidates.tolist()]

        parsed = self._parse_joined(chunk)
        if parsed is None:
            log.debug("decode_per_message", messages=len(chunk))
            parsed = [_parse_one(p) for p in chunk]
        is_object = np.fromiter(
            map(operator.is_, map(type, parsed), repeat(dict)), dtype=bool, count=len(parsed)
        )
        if is_object.all():
            return candidates, parsed
        for i in np.flatnonzero(~is_object).tolist():
            item = parsed[i]
            position = int(candidates[i])
            if isinstance(item, _ParseError):
                rejects.append(Reject(position, "not_json", f"not valid JSON: {item.message}"))
            else:
                kind = _JSON_KINDS.get(type(item), type(item).__name__)
                detail = f"valid JSON, but {kind} where an object was expected"
                rejects.append(Reject(position, "not_object", detail))
        keep = np.flatnonzero(is_object)
        return candidates[keep], [parsed[i] for i in keep.tolist()]

    def _parse_joined(self, chunk: Sequence[Any]) -> list | None:
        """All payloads in one orjson call, or None when any payload is not one JSON value.

        A payload such as `1,2` or `[1` would shift the boundaries of a plain comma join; with the
        secret sentinel between payloads the result is only accepted if every sentinel landed at
        an odd position of the top-level array, which proves each payload parsed as one value.
        """
        count = len(chunk)
        if count == 0:
            return []
        try:
            parsed = orjson.loads(b"[" + self._separator.join(chunk) + b"]")
        except orjson.JSONDecodeError:
            return None
        if len(parsed) != 2 * count - 1 or parsed[1::2].count(self._sentinel) != count - 1:
            return None
        return parsed[::2]

    # -- validation -------------------------------------------------------------------------

    def _validate(self, raw: _RawRecords, rejects: list[Reject], filtered: int = 0) -> Decoded:
        """The one rule set: key, then timestamp, then each value field in model order;
        `filtered` (records input.filter skipped before this) is passed through for counting."""
        n = raw.index.shape[0]
        verdicts = _Verdicts(raw.index, rejects)
        keys = self._check_keys(raw, verdicts)
        seconds = self._check_timestamps(raw, verdicts)
        values = np.empty((n, len(raw.values)), dtype=np.float32)
        for j, (field, column) in enumerate(zip(self._value_labels, raw.values, strict=True)):
            numbers, status = _as_float(column)
            with np.errstate(over="ignore", invalid="ignore"):
                values[:, j] = numbers  # float32 overflow turns into inf, refused just below
            refuse = partial(verdicts.refuse, raw=column, field=field)
            refuse(status == _MISSING, "missing_value", "{field} is missing or null")
            refuse(status == _OTHER, "non_numeric", "{field} is {value}, not a number")
            infinite = ~np.isfinite(values[:, j])
            refuse(infinite, "non_finite", "{field} is {value}, not a finite float32")

        good = ~verdicts.bad
        batch = EventBatch(
            index=raw.index[good].astype(np.int64, copy=False),
            keys=keys[good],
            ts=seconds[good],
            values=values[good],
        )
        rejects.sort(key=operator.attrgetter("index"))
        labels = None if raw.labels is None else _label_flags(raw.labels)[good]
        return Decoded(batch=batch, rejects=rejects, labels=labels, filtered=filtered)

    def _check_keys(self, raw: _RawRecords, verdicts: _Verdicts) -> np.ndarray:
        """Each key component checked by the same rules; with input.key_fields the components'
        texts are escaped and joined, so that no two different tuples give one key."""
        labels = self._key_labels or [
            "single series" if self._single_series else "Kafka message key"
        ]
        parts = []
        for field, column in zip(labels, raw.keys, strict=True):
            keys, status = _keys(column)
            refuse = partial(verdicts.refuse, raw=column, field=field)
            refuse(status == _MISSING, "missing_key", "{field} is missing or null")
            refuse(status == _EMPTY, "missing_key", "{field} is empty")
            refuse(status == _OTHER, "bad_key", "{field} is {value}, not a string or integer")
            parts.append(keys)
        if self._config.key_fields is None:
            return parts[0]
        texts = []
        for keys in parts:
            keys[verdicts.bad] = ""  # refused above; blanked so only text is escaped and joined
            texts.append(map(str.translate, keys.tolist(), repeat(_COMPOSITE_ESCAPES)))
        joined = list(map("|".join, zip(*texts, strict=True)))
        return np.fromiter(joined, dtype=object, count=len(joined))

    def _check_timestamps(self, raw: _RawRecords, verdicts: _Verdicts) -> np.ndarray:
        cfg = self._config
        ts_field = cfg.timestamp_field
        field = "broker timestamp" if ts_field is None else f"timestamp field '{ts_field}'"
        seconds, status = _timestamps(raw.ts, raw.ts_unit)
        refuse = partial(verdicts.refuse, raw=raw.ts, field=field)
        refuse(status == _MISSING, "bad_timestamp", "{field} is missing or null")
        expected = _TIME_EXPECTED[raw.ts_unit]
        unreadable = status == _OTHER
        refuse(unreadable, "bad_timestamp", "{field} is {value}, not {expected}", expected=expected)
        refuse(~np.isfinite(seconds), "bad_timestamp", "{field} is {value}, not finite")

        absurd = partial(verdicts.refuse, reason="absurd_timestamp", raw=seconds, field=field)
        latest = self._now() + cfg.max_future_s
        absurd(
            seconds < cfg.min_timestamp,
            template="{field} is {value} s since the epoch, before input.min_timestamp={limit}",
            limit=cfg.min_timestamp,
        )
        absurd(
            seconds > latest,
            template="{field} is {value} s since the epoch, more than input.max_future_s={limit}"
            " ahead of now",
            limit=cfg.max_future_s,
        )
        return seconds


def out_of_order(codes: np.ndarray, ts: np.ndarray, newest: np.ndarray) -> np.ndarray:
    """Which events are earlier than an event of their key that arrived before them: bool [N].

    codes:  int64 [N]    each event's key as a number in 0..K-1, in arrival order
    ts:     float64 [N]  event times
    newest: float64 [K]  each key's newest event time before these events (-inf: none)

    Such events are accepted and windowed in arrival order (a window is a key's last W events
    as they arrived), so this only counts them, for the operator to see a producer's clock or
    partitioning go wrong. Meant for the window store, which keeps each key's newest time. An
    in-order batch costs one sort of the codes, a batch with a key going back in time one more
    sort of its times; never a Python loop.
    """
    n = ts.shape[0]
    order = np.argsort(codes, kind="stable")
    key, time = codes[order], ts[order]
    first = np.ones(n, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    earlier = np.full(n, -np.inf)
    later = np.flatnonzero(~first)
    if np.any(time[later] < time[later - 1]):
        # Running maximum of each key's earlier times: in dense time ranks offset by n per key,
        # one cumulative maximum over the key-sorted events never carries across keys.
        values, rank = np.unique(time, return_inverse=True)
        segment = np.cumsum(first) - 1
        running = np.maximum.accumulate(segment * n + rank)
        earlier[later] = values[running[later - 1] - segment[later] * n]
    else:  # in order within each key: the newest earlier time is the previous event's
        earlier[later] = time[later - 1]
    behind = np.empty(n, dtype=bool)
    behind[order] = time < np.maximum(earlier, newest[key])
    return behind


class _ParseError:
    """Stands in for a payload orjson refused, keeping the per-message result list aligned."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _parse_one(payload: Any) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        lenient = _parse_non_finite(payload)
        return _ParseError(str(exc)) if lenient is None else lenient


def _parse_non_finite(payload: Any) -> Any | None:
    """The payload with `NaN`, `Infinity`, `-Infinity` and out-of-range numbers read as
    non-finite floats, or None unless such a number is what orjson refused.

    Producers (Python's json, JavaScript's NaN) do write these, and to their user such a record
    holds a non-finite measurement, not broken JSON: parsed this way it goes through the same
    field checks as any record and is refused as `non_finite` (or `bad_timestamp`) with the field
    named. Only payloads orjson refused get here, so good batches never pay for it.
    """
    found = False

    def number(text: str) -> float:
        nonlocal found
        value = float(text)  # "NaN", "Infinity", "-Infinity" and overflow all give non-finite
        found = found or not math.isfinite(value)
        return value

    def integer(text: str) -> int | float:
        whole = int(text)
        return number(text) if math.isinf(_clamped_float(whole)) else whole

    try:
        # Decoded first: json.loads would guess UTF-16/32 from bytes, which orjson never accepts.
        text = bytes(payload).decode("utf-8")
        value = json.loads(text, parse_constant=number, parse_float=number, parse_int=integer)
        # Whatever the lenient parser lets through beyond orjson (lone surrogates, extreme
        # nesting) must not reach the rest of the service, which writes keys back with orjson.
        orjson.dumps(value)
    except (ValueError, RecursionError, orjson.JSONEncodeError):
        return None
    return value if found else None


def _extract(objects: list[dict], path: Sequence[str]) -> list[Any]:
    """The value at a path (its keys, from `path_segments`) in each object; None where any step
    is absent or not an object.

    `map(dict.get, ...)` runs without a Python frame per record, which is most of decode's time
    after parsing; the guarded comprehension is only needed once some step is not an object.
    """
    column: list[Any] = objects
    for part in path:
        try:
            column = list(map(dict.get, column, repeat(part)))
        except TypeError:
            column = [v.get(part) if type(v) is dict else None for v in column]
    return column


def _single_series_keys(n: int) -> np.ndarray:
    """The one key of every record of a feed that is a single series."""
    return np.full(n, SINGLE_SERIES_KEY, dtype=object)


def _kafka_keys(keys: list[Any]) -> list[Any]:
    """Message keys as text; a key that is not UTF-8 stays bytes so validation calls it bad."""
    try:
        return [k.decode() for k in keys]
    except (AttributeError, UnicodeDecodeError):
        return [_key_text(k) for k in keys]


def _key_text(key: Any) -> Any:
    if not isinstance(key, _BYTES_TYPES):
        return key
    try:
        return bytes(key).decode()
    except UnicodeDecodeError:
        return bytes(key)


def _broker_times(ms: np.ndarray) -> np.ndarray:
    """Kafka reports -1 when a message has no timestamp; that is a missing time, not 1969."""
    absent = ms < 0
    if not absent.any():
        return ms
    raw = ms.astype(object)
    raw[absent] = None
    return raw


def _keys(raw: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys as an object array of str plus a per-record status (integers become their text)."""
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    n = len(raw)
    status = np.fromiter(map(_KEY_STATUS.get, map(type, raw), repeat(_OTHER)), np.int8, n)
    keys = np.fromiter(raw, dtype=object, count=n)
    integers = np.flatnonzero(status == _INTEGER)
    if integers.size:
        texts = [_int_text(k) for k in keys[integers].tolist()]
        keys[integers] = texts
        status[integers] = [_OTHER if t is None else _OK for t in texts]
    texts_at = np.flatnonzero(status == _OK)
    status[texts_at[keys[texts_at] == ""]] = _EMPTY
    return keys, status


def _int_text(key: int) -> str | None:
    try:
        return str(key)
    except ValueError:  # beyond Python's int-to-str digit limit; no real key is that long
        return None


def _as_float(raw: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 of every number (NaN elsewhere) and a status saying number / missing / other."""
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind in "iuf":
            return raw.astype(np.float64), np.zeros(raw.shape[0], dtype=np.int8)
        raw = raw.tolist()
    n = len(raw)
    if set(map(type, raw)) <= _PLAIN_NUMBERS:  # the usual case, at half the cost of the general one
        return _floats(raw), np.zeros(n, dtype=np.int8)
    status = np.fromiter(map(_VALUE_STATUS.get, map(type, raw), repeat(_OTHER)), np.int8, n)
    numbers = np.flatnonzero(status == _OK)
    out = np.full(n, np.nan)
    if numbers.size:
        out[numbers] = _floats([raw[i] for i in numbers.tolist()])
    return out, status


def _floats(numbers: Sequence[Any]) -> np.ndarray:
    try:
        return np.array(numbers, dtype=np.float64)
    except OverflowError:  # a Python int beyond float range: it is an infinite measurement
        return np.array([_clamped_float(v) for v in numbers], dtype=np.float64)


def _clamped_float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def _timestamps(raw: Sequence[Any] | np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds (NaN where unusable) and the status of each raw timestamp."""
    numbers, status = _as_float(raw)
    seconds = np.full(numbers.shape[0], np.nan)
    is_number = status == _OK
    if unit == "rfc3339":
        status[is_number] = _OTHER
    elif unit == "auto":
        scale = 1000.0 ** np.searchsorted(_AUTO_BOUNDS, np.abs(numbers[is_number]), side="right")
        seconds[is_number] = numbers[is_number] / scale
    else:
        seconds[is_number] = numbers[is_number] / _UNIT_DIVISOR[unit]
    if unit in ("auto", "rfc3339"):
        others = np.flatnonzero(status == _OTHER)
        if others.size:
            parsed = np.array([_rfc3339(raw[i]) for i in others.tolist()], dtype=np.float64)
            ok = ~np.isnan(parsed)
            seconds[others[ok]] = parsed[ok]
            status[others[ok]] = _OK
    return seconds, status


def _rfc3339(text: Any) -> float:
    """Epoch seconds of an RFC 3339 time, NaN if it is not one; a zone-less time is taken as UTC
    because that is what producers without an offset overwhelmingly mean."""
    if type(text) is not str:
        return np.nan
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:  # RFC 3339 allows lower-case 't' and 'z', which fromisoformat does not
            moment = datetime.fromisoformat(text.upper())
        except ValueError:
            return np.nan
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):
        return np.nan


def _numbers_from_text(column: Sequence[Any] | np.ndarray) -> Sequence[Any] | np.ndarray:
    """CSV cells are text: numeric text becomes a float, blank becomes missing, and anything else
    stays text so its reject can quote it."""
    if isinstance(column, np.ndarray):
        if column.dtype.kind in "iufb":
            return column
        column = column.tolist()  # numpy str_ cells become plain str
    return [_cell(v) if type(v) is str else v for v in column]


def _cell(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _bools_from_text(column: Sequence[Any] | np.ndarray) -> list[Any]:
    """CSV cells for a boolean filter: 'true'/'false' (any case) read as the bool."""
    words = {"true": True, "false": False}
    return [words.get(v.strip().lower(), v) if type(v) is str else v for v in column]


def _label_flags(raw: Sequence[Any] | np.ndarray) -> np.ndarray:
    """1 where the label is true, a non-zero number or 'true'/'yes'/'1'; 0 otherwise (absent too),
    because a label is ground truth for evaluation and must never reject an event."""
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iufb":
        numbers = raw.astype(np.float64)
    else:
        words = [
            1 if v is True or (type(v) is str and v.strip().lower() in _TRUE_WORDS) else v
            for v in raw
        ]
        numbers, status = _as_float(words)
        numbers[status != _OK] = 0.0
    return (np.isfinite(numbers) & (numbers != 0)).astype(np.int8)


def _show(value: Any) -> str:
    """A short, safe rendering of a hostile value for a reject detail."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + "..."
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
