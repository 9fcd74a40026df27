"""What a field's name suggests: the words a source, a peer, a category or an identifier use.

Names are split into words at '_', '.', '-' and '@', so `id.orig_h` is (id, orig, h) and
`dst_port` is (dst, port). Values decide first everywhere; names only break ties and veto the
numbers that are labels (ports, ids, codes) rather than measurements.
"""

from __future__ import annotations

import re
from typing import Final

SOURCE_WORDS: Final = frozenset({
    "src", "source", "orig", "client", "host", "hostname", "device", "sensor", "node",
    "instance", "machine", "station", "meter", "entity", "agent", "asset", "serial", "key",
})
PEER_WORDS: Final = frozenset({
    "dst", "dest", "destination", "resp", "server", "remote", "peer", "target",
})
CATEGORY_WORDS: Final = frozenset({
    "proto", "protocol", "type", "state", "status", "service", "level", "kind", "history",
    "event", "app", "code", "flags", "method", "etype",
})
IDENTIFIER_WORDS: Final = frozenset({
    "id", "uid", "port", "p", "seq", "sequence", "num", "number", "vlan", "if", "index", "idx",
    "code", "type", "proto", "version", "pid", "flags", "serial", "ttl", "tos", "label",
})
PORT_WORDS: Final = frozenset({"port", "p"})
LABEL_NAMES: Final = frozenset({
    "label", "is_anomaly", "anomaly", "is_anomalous", "anomalous", "outlier", "is_outlier",
})
VOLUME_MARKERS: Final = ("bytes", "pkts", "packets", "octets")
TIME_NAMES: Final = frozenset({
    "ts", "timestamp", "@timestamp", "time", "event_time", "eventtime", "datetime",
})


def words(name: str) -> frozenset[str]:
    return frozenset(w for w in re.split(r"[_.\-@]+", name.lower()) if w)


def is_volume(name: str) -> bool:
    """A byte or packet count: what a flow's size is measured in, summed per bucket."""
    return any(marker in name.lower() for marker in VOLUME_MARKERS)
