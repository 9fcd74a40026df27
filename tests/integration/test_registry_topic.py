"""The model registry on a Kafka topic, against a real broker: two registries on one topic agree,
each sees the other's changes after a refresh, and loads the other's artefacts from its own
cache."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from stream_detector.config import KafkaConfig, Settings
from stream_detector.detector.artefact import TrainingResult, load_artefact, save_artefact
from stream_detector.detector.registry import RegistryError
from stream_detector.engine.model import LSTMAutoencoder
from stream_detector.kafka.registry_topic import TopicRegistry, open_registry

pytestmark = pytest.mark.integration

SETTINGS = Settings(
    input={"value_fields": ("cpu", "latency")},
    window={"size": 8},
    model={"hidden_size": 8, "num_layers": 1, "latent_size": 4, "device": "cpu"},
)
RESULT = TrainingResult(
    norm_mean=(1.0, 2.0),
    norm_std=(0.5, 3.0),
    calibration_quantiles={"0.5": 0.1, "0.9": 0.2},
    global_threshold=0.4,
    training={"epochs_run": 3, "best_epoch": 2},
)
SPAN = (1_714_550_400.0, 1_714_636_800.0)


def _artefact(
    directory: Path, seed: int, settings: Settings = SETTINGS, result: TrainingResult = RESULT
) -> str:
    torch.manual_seed(seed)
    model = settings.model
    lstm = LSTMAutoencoder(2, 8, model.hidden_size, model.num_layers, model.latent_size)
    return save_artefact(directory, lstm, settings, result).metadata.model_version


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("artefacts")
    return [(root / f"a{seed}", _artefact(root / f"a{seed}", seed)) for seed in range(2)]


@pytest.fixture
def on_topic(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> tuple[KafkaConfig, str]:
    """The broker's settings and a fresh one-partition registry topic."""
    return KafkaConfig(bootstrap_servers=kafka_bootstrap), topic_factory("registry", partitions=1)


@pytest.fixture
def opened() -> Iterator[Callable[..., TopicRegistry]]:
    registries: list[TopicRegistry] = []

    def open_one(kafka: KafkaConfig, topic: str, cache: Path | None = None) -> TopicRegistry:
        registries.append(TopicRegistry(kafka, topic, cache, timeout_s=20.0))
        return registries[-1]

    yield open_one
    for registry in registries:
        registry.close()


def test_two_registries_on_one_topic_see_each_others_changes(
    on_topic: tuple[KafkaConfig, str],
    opened: Callable[..., TopicRegistry],
    artefacts: list[tuple[Path, str]],
    tmp_path: Path,
) -> None:
    kafka, topic = on_topic
    (d1, a), (d2, b) = artefacts
    one, two = opened(kafka, topic, tmp_path / "one"), opened(kafka, topic, tmp_path / "two")
    assert one.entries() == [] and two.active() is None

    entry = one.register(d1, source="train", parent=None, data_span=SPAN)
    assert one.entries() == [entry]  # the writer reads its own record back
    assert one.register(d1, source="again", parent=None, data_span=None) == entry
    one.promote(a, "first")
    assert two.entries() == [] and two.active() is None  # until it reads again
    two.refresh()
    assert two.entries() == [entry] and two.active() == a
    served = two.artefact_dir(a)
    assert served.parent == tmp_path / "two"
    assert load_artefact(served, SETTINGS).metadata.model_version == a

    started = time.monotonic()
    two.refresh()  # nothing new: the end is still reported, at once
    assert time.monotonic() - started < 5

    two.register(d2, source="retrain:topic", parent=a, data_span=None)
    two.promote(b, "better")
    two.attach_report(b, "shadow", {"verdict": "pass", "episodes": [1, 2]})
    one.refresh()
    assert one.active() == b and one.entry(b).parent == a
    assert one.entry(b).reports == {"shadow": {"verdict": "pass", "episodes": [1, 2]}}
    assert load_artefact(one.artefact_dir(b), SETTINGS).metadata.model_version == b

    assert one.rollback("storm").version == a
    with pytest.raises(RegistryError, match="already the active version"):
        two.promote(a, "raced")  # decided on the topic as it is, not on what `two` read
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        two.rollback("again")
    assert two.history() == one.history()

    settings = Settings(kafka=kafka, lifecycle={"registry_topic": topic})
    three = open_registry(settings, tmp_path / "three")
    assert isinstance(three, TopicRegistry)
    try:
        assert three.entries() == one.entries() and three.history() == one.history()
    finally:
        three.close()


def test_the_same_weights_calibrated_otherwise_are_refused_by_another_registry(
    on_topic: tuple[KafkaConfig, str],
    opened: Callable[..., TopicRegistry],
    artefacts: list[tuple[Path, str]],
    tmp_path: Path,
) -> None:
    """What one registry stored is compared from the other's cache: a version names its weights
    only, so the same weights with another threshold would otherwise pass for the stored model."""
    kafka, topic = on_topic
    (d1, a), _ = artefacts
    other = dataclasses.replace(RESULT, global_threshold=0.5)
    assert _artefact(tmp_path / "other", 0, result=other) == a  # d1's weights, seed 0
    one, two = opened(kafka, topic, tmp_path / "one"), opened(kafka, topic, tmp_path / "two")
    entry = one.register(d1, source="train", parent=None, data_span=None)
    assert two.register(d1, source="again", parent=None, data_span=None) == entry
    with pytest.raises(RegistryError, match="registered already with other settings"):
        two.register(tmp_path / "other", source="train", parent=None, data_span=None)
    one.refresh()
    assert one.entries() == [entry]


def test_records_that_cannot_be_applied_are_skipped_by_every_reader(
    on_topic: tuple[KafkaConfig, str],
    produce_events: Callable[..., None],
    opened: Callable[..., TopicRegistry],
    artefacts: list[tuple[Path, str]],
) -> None:
    kafka, topic = on_topic
    (d1, a), _ = artefacts
    writer = opened(kafka, topic)
    writer.register(d1, source="train", parent=None, data_span=None)
    produce_events(
        topic,
        [
            (b"x", b"\x80 not json"),
            (b"x", b'{"kind": "history", "record": {"action": "promote"}}'),
            (b"x", b'{"kind": "rollback"}'),
        ],
    )
    writer.promote(a, "first")
    reader = opened(kafka, topic)
    assert reader.active() == a and reader.history() == writer.history()
    assert len(reader.history()) == 1


def test_what_cannot_be_written_is_refused_before_anything_is_sent(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    opened: Callable[..., TopicRegistry],
    tmp_path: Path,
) -> None:
    topic = topic_factory("registry", partitions=1)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap, max_message_bytes=16_384)
    wide = Settings(
        input={"value_fields": ("cpu", "latency")},
        window={"size": 8},
        model={"hidden_size": 64, "num_layers": 1, "latent_size": 4, "device": "cpu"},
    )
    _artefact(tmp_path / "wide", 0, wide)
    registry = opened(kafka, topic)
    with pytest.raises(RegistryError, match="more than kafka.max_message_bytes = 16384"):
        registry.register(tmp_path / "wide", source="train", parent=None, data_span=None)
    with pytest.raises(RegistryError, match="does not exist; create it"):
        opened(kafka, f"{topic}-missing")
    registry.refresh()
    assert registry.entries() == []
