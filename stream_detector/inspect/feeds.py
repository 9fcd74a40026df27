"""Which shipped preset, if any, the sample looks like: its mapping is tested and documented,
so it beats any guess."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from stream_detector.inspect.profile import Segments

Signature = Callable[[set[Segments]], bool]


def _has(*paths: Segments) -> Signature:
    return lambda seen: all(p in seen for p in paths)


def _nested(*parents: str) -> Callable[[set[Segments]], bool]:
    return lambda seen: all(any(len(s) > 1 and s[0] == p for s in seen) for p in parents)


# preset, what gives it away, and how that reads in the header.
SIGNATURES: Final[tuple[tuple[str, Signature, str], ...]] = (
    ("zeek-conn", _has(("id.orig_h",), ("conn_state",)),
     "Zeek conn.log (`id.orig_h` and `conn_state`)"),
    ("suricata-flow", lambda s: _has(("event_type",))(s) and _nested("flow")(s),
     "Suricata EVE flow events (`event_type` and `flow.*`)"),
    ("goflow2", _has(("src_addr",), ("time_received_ns",)),
     "goflow2 flows (`src_addr` and `time_received_ns`)"),
    ("telegraf-cpu", lambda s: _has(("name",))(s) and _nested("tags", "fields")(s),
     "Telegraf JSON metrics (`name`, `tags.*`, `fields.*`)"),
)


def matching_preset(segments: set[Segments]) -> tuple[str, str] | None:
    """(preset name, what matched) for the first preset whose fields the sample has."""
    for name, signature, described in SIGNATURES:
        if signature(segments):
            return name, described
    return None
