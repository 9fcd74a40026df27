"""Byte sizes of Kafka records: what the service produces must fit under the brokers' limits.

librdkafka refuses to produce a message whose worst-case wire size (value, key, headers and the
v2 record framing) exceeds the producer's `message.max.bytes`, and a broker refuses a record
batch larger than the topic's `max.message.bytes`. `record_size` over-estimates both framings,
so a record it measures at or under a limit passes both checks. This module imports nothing from
the rest of the package: config.py validates the settings with the same framing figures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

Header = tuple[str, bytes | None]

# One v2 record's framing (at most 36 bytes: length, attributes, deltas, key/value lengths, header
# count) plus the record batch header it travels in when it is alone (61 bytes), rounded up.
RECORD_FRAMING_BYTES = 128
# A header's two varint lengths, at most 5 bytes each.
HEADER_FRAMING_BYTES = 10
# librdkafka wants receive.message.max.bytes at least fetch.max.bytes + 512 for the framing of a
# fetch response; a response naming many partitions needs more than the minimum.
FETCH_RESPONSE_FRAMING_BYTES = 64 * 1024


def header_size(header: Header) -> int:
    name, value = header
    return len(name.encode()) + len(value or b"") + HEADER_FRAMING_BYTES


def record_size(value: bytes | None, key: bytes | None, headers: Sequence[Header]) -> int:
    """An upper bound of the record's size on the wire, as librdkafka and the broker count it."""
    return (
        RECORD_FRAMING_BYTES
        + len(value or b"")
        + len(key or b"")
        + sum(header_size(header) for header in headers)
    )


def fit_record(
    value: bytes | None,
    key: bytes | None,
    own: list[Header],
    copied: list[Header],
    limit: int,
) -> tuple[bytes | None, bytes | None, list[Header]]:
    """The record as (value, key, headers) cut to at most `limit` bytes.

    `own` headers are always kept; `copied` ones are the first to go when even the key leaves no
    room for them. A record that fits is returned whole. One that does not keeps a prefix of its
    value (and, only when the key and headers alone are too large, of its key and as many copied
    headers as fit), with headers saying so: `truncated` lists the parts cut, `original_size`
    and `original_sha256` describe the whole original value, so the dead letter still names
    exactly which record it stands for.
    """
    if record_size(value, key, own + copied) <= limit:
        return value, key, own + copied
    payload = value or b""
    marks: list[Header] = [
        ("original_size", str(len(payload)).encode()),
        ("original_sha256", hashlib.sha256(payload).hexdigest().encode()),
    ]
    # The `truncated` header's value is at most "value,key,headers": reserve that much for it.
    room = limit - record_size(None, None, [*own, *marks, ("truncated", b"value,key,headers")])
    cut: list[str] = []
    kept_key = key
    if key is not None and len(key) > max(room, 0):
        kept_key, cut = key[: max(room, 0)], ["key"]
    room -= len(kept_key or b"")
    kept: list[Header] = []
    for header in copied:
        if header_size(header) <= room:
            kept.append(header)
            room -= header_size(header)
    if len(kept) < len(copied):
        cut.append("headers")
    kept_value = value
    if len(payload) > max(room, 0):
        kept_value = payload[: max(room, 0)]
        cut.insert(0, "value")
    truncated: Header = ("truncated", ",".join(cut).encode())
    return kept_value, kept_key, [*own, truncated, *marks, *kept]
