"""Labels that hold for a whole feed, not one key: a network-wide attack span.

In a network capture an attack is an interval of time (`BAD-SSH-START` .. `BAD-SSH-END` in an
injection log), not a range of one key's events: an alert on any key inside the span detects it
(scored by feedwide.py). A benign span (a labelled event that must not alert, like a good SSH
login) is kept too, since alerts inside it are the false alerts an operator would resent most.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeedSpan:
    """One labelled interval of the feed's event time, both ends inclusive."""

    kind: str
    start_ts: float
    end_ts: float
    attack: bool  # False: a benign event that must not alert


@dataclass(frozen=True)
class FeedLabels:
    """The feed's labelled spans; only spans ending at or after `test_from_ts` are scored.

    `sample_span_s`: how much event time each sample covers up to its timestamp (a bucket's
    width), so an episode is taken to begin where the bucket that opened it began.
    """

    spans: tuple[FeedSpan, ...]
    test_from_ts: float
    sample_span_s: float = 0.0
