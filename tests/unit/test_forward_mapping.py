"""The forwarder's view of the alert topic: records read back into alerts (or refused), each
episode as one Alertmanager alert, and the table of open episodes rebuilt from replayed records."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from stream_detector.engine.alerts import (
    Alert,
    FeatureContribution,
    alert_id_for,
    episode_id_for,
    rfc3339,
)
from stream_detector.forward.episodes import OpenEpisodes
from stream_detector.forward.mapping import AlertMapping
from stream_detector.forward.records import MalformedAlert, decode_alert

SOURCE = "stream-detector/test"
MAPPING = AlertMapping("StreamDetectorAnomaly", "https://ui.example/alerts/{alert_id}?key={key}")


def opened(key: str = "device-0042", at: float = 1_763_899_231.0) -> Alert:
    episode = episode_id_for(key, at, "lstm-ae-1")
    return Alert(
        kind="open",
        alert_id=alert_id_for(episode, "open"),
        episode_id=episode,
        key=key,
        window_start=at - 31,
        window_end=at,
        score=0.9,
        threshold=0.3,
        severity="high",
        top_features=(
            FeatureContribution("metrics.temperature", 41.7, 22.9, 0.83),
            FeatureContribution("metrics.humidity", 30.0, 31.0, 0.1),
        ),
        model_version="lstm-ae-1",
        episode_start=at,
        windows_over=2,
        event_index=5,
    )


def resolved(open_alert: Alert, after_s: float = 120.0) -> Alert:
    """The episode's resolve: its peak made it critical, and another feature led there."""
    return replace(
        open_alert,
        kind="resolve",
        alert_id=alert_id_for(open_alert.episode_id, "resolve"),
        window_start=open_alert.window_end + after_s - 31,
        window_end=open_alert.window_end + after_s,
        score=4.0,
        severity="critical",
        top_features=(FeatureContribution("metrics.vibration", 9.4, 2.1, 0.7),),
        windows_over=14,
        reason="cooldown",
    )


def wire(alert: Alert) -> Alert:
    """The alert as the forwarder reads it back from the topic."""
    return decode_alert(alert.to_cloudevent(SOURCE))


# -- records ---------------------------------------------------------------------------------------


def test_a_cloudevent_reads_back_into_the_alert_it_was_written_from() -> None:
    stuck = replace(opened(), flat_features=("metrics.humidity",))
    ended = replace(resolved(opened()), anomaly_end=opened().window_end + 40)
    for alert in (opened(), resolved(opened()), stuck, ended):
        assert wire(alert) == replace(alert, event_index=-1)


def test_an_alert_of_an_older_detector_reads_without_the_newer_fields() -> None:
    envelope = orjson.loads(resolved(opened()).to_cloudevent(SOURCE))
    del envelope["data"]["flat_features"], envelope["data"]["anomaly_end"]
    alert = decode_alert(orjson.dumps(envelope))
    assert alert.flat_features == () and alert.anomaly_end is None


def test_fields_a_newer_detector_adds_are_ignored() -> None:
    envelope = orjson.loads(opened().to_cloudevent(SOURCE))
    envelope["data"]["confidence"] = 0.99
    envelope["traceparent"] = "00-abc"
    assert decode_alert(orjson.dumps(envelope)).key == "device-0042"


def _edited(change: Any) -> bytes:
    envelope = orjson.loads(opened().to_cloudevent(SOURCE))
    change(envelope)
    return orjson.dumps(envelope)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty record"),
        (b"", "empty record"),
        (b"{this is not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"specversion": "1.0", "type": ["x"]}', "is not a stream-detector alert"),
        (_edited(lambda e: e.update(specversion="0.3")), "not a CloudEvent 1.0"),
        (_edited(lambda e: e.update(type="com.example.other")), "not a stream-detector alert"),
        (_edited(lambda e: e.pop("data")), "no data object"),
        (_edited(lambda e: e["data"].update(kind="resolve")), "contradicts type"),
        (_edited(lambda e: e["data"].pop("episode_id")), "data.episode_id is None"),
        (_edited(lambda e: e["data"].update(score="high")), "data.score is 'high', not a number"),
        (_edited(lambda e: e["data"].update(score=True)), "data.score is True, not a number"),
        (_edited(lambda e: e["data"].update(window_end=1e300)), "data.window_end"),
        (_edited(lambda e: e["data"].update(severity="urgent")), "data.severity is 'urgent'"),
        (_edited(lambda e: e["data"].update(windows_over=2.5)), "not an integer"),
        (_edited(lambda e: e["data"].update(reason="bored")), "data.reason is 'bored'"),
        (_edited(lambda e: e["data"].update(reason="cooldown")), "data.reason is 'cooldown'"),
        (_edited(lambda e: e["data"].update(top_features={})), "not a list"),
        (_edited(lambda e: e["data"].update(top_features=[{"name": "t"}])),
         "data.top_features[0].actual is None"),
        (_edited(lambda e: e["data"].update(flat_features="t")), "data.flat_features is 't'"),
        (_edited(lambda e: e["data"].update(flat_features=[""])), "data.flat_features[0]"),
        (_edited(lambda e: e["data"].update(anomaly_end=-5)), "data.anomaly_end"),
    ],
)
def test_anything_but_our_alert_is_refused_with_the_reason(
    value: bytes | None, reason: str
) -> None:
    with pytest.raises(MalformedAlert) as refused:
        decode_alert(value)
    assert reason in str(refused.value)


# -- one episode, one Alertmanager alert -----------------------------------------------------------


def test_the_resolve_posts_the_labels_of_the_open_although_its_own_differ() -> None:
    open_alert = opened()
    resolve = resolved(open_alert)
    firing = MAPPING.opened(wire(open_alert))
    ended = MAPPING.resolved(wire(resolve), firing)
    assert firing.labels == ended.labels == {
        "alertname": "StreamDetectorAnomaly",
        "key": "device-0042",
        "severity": "high",
        "model_version": "lstm-ae-1",
        "top_feature": "metrics.temperature",
        "episode_id": open_alert.episode_id,
    }
    # Made from the resolve alone, they would be another alert's: severity and top feature moved.
    assert MAPPING.labels(resolve) != firing.labels


def test_two_episodes_of_one_key_are_two_alerts() -> None:
    first, second = opened(at=1_763_899_231.0), opened(at=1_763_999_231.0)
    assert MAPPING.opened(first).labels != MAPPING.opened(second).labels


def test_firing_alert_starts_at_the_episode_and_is_valid_for_a_while_from_now() -> None:
    alert = opened()
    payload = MAPPING.opened(alert).payload(now=1_800_000_000.0, valid_for_s=240.0)
    assert payload["startsAt"] == rfc3339(alert.episode_start) == "2025-11-23T12:00:31.000Z"
    assert payload["endsAt"] == rfc3339(1_800_000_240.0)
    # A detector clock ahead of ours: the alert still ends after it starts.
    early = MAPPING.opened(alert).payload(now=alert.episode_start - 3600, valid_for_s=240.0)
    assert early["endsAt"] == rfc3339(alert.episode_start + 240.0)


def test_resolved_alert_ends_at_the_resolve_time_whenever_it_is_posted() -> None:
    open_alert = opened()
    resolve = resolved(open_alert, after_s=120.0)
    ended = MAPPING.resolved(resolve, MAPPING.opened(open_alert))
    for now in (0.0, 1_900_000_000.0):
        payload = ended.payload(now=now, valid_for_s=240.0)
        assert payload["startsAt"] == rfc3339(open_alert.episode_start)
        assert payload["endsAt"] == rfc3339(resolve.window_end)
    assert not ended.firing


def test_annotations_explain_the_alert() -> None:
    alert = opened()
    annotations = MAPPING.opened(alert).annotations
    assert annotations["summary"] == (
        "device-0042: anomaly (high), score 0.9 is 3x its threshold 0.3"
    )
    description = annotations["description"]
    assert "metrics.temperature 41.7 (expected 22.9, 83% of the error)" in description
    assert "metrics.humidity 30 (expected 31, 10% of the error)" in description
    assert annotations["score"] == "0.9" and annotations["threshold"] == "0.3"
    assert annotations["alert_id"] == alert.alert_id
    assert annotations["episode_id"] == alert.episode_id
    assert "reason" not in annotations

    resolve = resolved(alert)
    ended = MAPPING.resolved(resolve, MAPPING.opened(alert)).annotations
    assert ended["summary"].startswith(
        "device-0042: anomaly resolved (back to normal), peak score 4"
    )
    assert "at the episode's peak" in ended["description"]
    assert "metrics.vibration 9.4 (expected 2.1, 70% of the error)" in ended["description"]
    assert ended["alert_id"] == resolve.alert_id and ended["reason"] == "cooldown"


def test_a_flat_line_is_named_and_a_resolve_says_where_the_anomaly_ended() -> None:
    stuck = replace(opened(), score=0.01, severity="low", flat_features=("metrics.humidity",))
    annotations = MAPPING.opened(stuck).annotations
    assert annotations["summary"] == "device-0042: flat line on metrics.humidity (low)"
    assert annotations["description"].startswith("Flat line: metrics.humidity stood still")
    end = stuck.window_end + 40
    resolve = replace(resolved(stuck), anomaly_end=end)
    ended = MAPPING.resolved(resolve, MAPPING.opened(stuck)).annotations
    assert f"anomalous until {rfc3339(end)}" in ended["description"]


def test_a_new_key_reads_back_and_is_announced_as_one() -> None:
    arrived = replace(
        opened(), window_start=1_763_899_231.0, score=0.0, severity="low", top_features=(),
        windows_over=0, reason="new_key",
    )
    assert decode_alert(arrived.to_cloudevent(SOURCE)) == replace(arrived, event_index=-1)
    annotations = MAPPING.opened(arrived).annotations
    assert annotations["summary"] == "device-0042: new key, not among the model's training keys"
    assert annotations["reason"] == "new_key"
    calm = replace(resolved(arrived), score=0.0, windows_over=0, reason="cooldown")
    assert MAPPING.resolved(calm, MAPPING.opened(arrived)).annotations["summary"] == (
        "device-0042: new key's episode resolved (back to normal), no window over threshold"
    )


def test_generator_url_fills_the_link_template_quoted_and_is_left_out_without_one() -> None:
    alert = opened(key="rack 7/dev#1")
    payload = MAPPING.opened(alert).payload(now=0.0, valid_for_s=1.0)
    assert payload["generatorURL"] == (
        f"https://ui.example/alerts/{alert.alert_id}?key=rack%207%2Fdev%231"
    )
    plain = AlertMapping("StreamDetectorAnomaly").opened(alert).payload(now=0.0, valid_for_s=1.0)
    assert "generatorURL" not in plain


def test_an_alert_without_top_features_has_no_top_feature_label() -> None:
    alert = replace(opened(), top_features=())
    assert "top_feature" not in MAPPING.labels(alert)
    assert "none reported" in MAPPING.opened(alert).annotations["description"]


# -- the open episodes -----------------------------------------------------------------------------


def test_table_rebuilt_from_replayed_records_holds_exactly_the_open_episodes() -> None:
    first, second, third = opened("a"), opened("b"), opened("a", at=1_763_999_231.0)
    replayed = [(0, first), (1, second), (0, resolved(first)), (0, third)]
    table = OpenEpisodes(MAPPING)
    for partition, alert in replayed:
        table.apply(partition, wire(alert))
    assert sorted(s.labels["episode_id"] for s in table.firing()) == sorted(
        [second.episode_id, third.episode_id]
    )
    # The resolve read after the rebuild ends the episode under its open's labels.
    ended = table.apply(1, wire(resolved(second)))
    assert ended.labels == MAPPING.opened(second).labels and not ended.firing
    assert [s.labels["episode_id"] for s in table.firing()] == [third.episode_id]


def test_a_re_delivered_open_leaves_one_episode() -> None:
    table = OpenEpisodes(MAPPING)
    alert = opened()
    table.apply(0, alert)
    table.apply(0, alert)
    assert len(table) == 1


def test_a_resolve_whose_open_was_never_read_is_posted_under_its_own_labels() -> None:
    resolve = resolved(opened())
    ended = OpenEpisodes(MAPPING).apply(0, resolve)
    assert ended.labels == MAPPING.labels(resolve)
    assert ended.starts_at == resolve.episode_start and ended.ends_at == resolve.window_end


def test_revoked_partitions_take_their_episodes_with_them() -> None:
    table = OpenEpisodes(MAPPING)
    table.apply(0, opened("a"))
    table.apply(1, opened("b"))
    table.apply(1, opened("c"))
    assert table.forget_partitions([1, 5]) == 2
    assert [s.labels["key"] for s in table.firing()] == ["a"]
