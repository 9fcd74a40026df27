"""Static checks of the deployment files: what CI can verify on every run, with no cluster, no
registry and no image build.

- The compose files go through `docker-compose config` (Debian's docker-compose 1.29, or
  `docker compose`), which parses, merges and validates them as `up` would, with and without the
  `alerting` profile (Prometheus, Alertmanager, the forwarder).
- The Kubernetes manifests go through kubernetes-validate's bundled (offline) OpenAPI schemas in
  strict mode, so a misspelt field fails; the KEDA ScaledObject, a CRD those schemas lack, through a
  schema of the fields used here.
- On top, the rules that span files and no schema sees: replicas <= input partitions, a grace
  period longer than the drain timeout, probes on the port the config serves, secrets by reference
  only, one model fingerprint for the image, compose and Kubernetes configurations, and Prometheus
  scraping the port the detector serves and alerting to the address Alertmanager listens on.

Locally a missing tool skips its tests; with CI=true it fails them (scripts/validate-deploy.sh
installs the tools).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from stream_detector.cli import build_parser
from stream_detector.config import Settings, load_settings
from stream_detector.demo.broker import tansu_version
from stream_detector.demo.scenario import BUNDLED_MODEL_DIR
from stream_detector.detector.artefact import load_artefact
from stream_detector.engine.decode import Decoder
from stream_detector.scenarios.presets import preset
from stream_detector.scenarios.telemetry import GeneratorConfig, TelemetryGenerator, mapping_for

try:  # declared in the test extras; absent only on a stale environment
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError:  # pragma: no cover - reported by the tests that need them
    jsonschema = kubernetes_validate = yaml = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
COMPOSE_CONFIG = REPO / "deploy" / "compose" / "detector.toml"
BASE_COMPOSE = REPO / "docker-compose.yml"
TANSU_OVERRIDE = REPO / "deploy" / "compose" / "tansu.override.yml"
PORTS_OVERRIDE = REPO / "deploy" / "compose" / "ports.override.yml"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
# The oldest Kubernetes minor still commonly run, and the newest the schemas know.
K8S_VERSIONS = ("1.29.0", "latest")


def _require(available: bool, what: str, how: str) -> None:
    if available:
        return
    message = f"{what} is not available: {how}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the deployment files must be validated in CI)")
    pytest.skip(message)


def _require_yaml_tools() -> None:
    _require(
        yaml is not None and kubernetes_validate is not None,
        "kubernetes-validate (with PyYAML and jsonschema)",
        "install the test extras: pip install -e '.[test]'",
    )


@pytest.fixture(autouse=True)
def _no_sd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are checked as written; an SD_* variable in the caller's shell must not count."""
    for name in list(os.environ):
        if name.startswith("SD_"):
            monkeypatch.delenv(name)


def _seconds(duration: str | int | float) -> float:
    """Compose durations ('45s', '1m30s', or plain seconds) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- the demo configuration ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_settings() -> Settings:
    return load_settings(COMPOSE_CONFIG)


def test_demo_config_reads_the_generator_feed(compose_settings: Settings) -> None:
    mapping = mapping_for(GeneratorConfig())
    assert {name: getattr(compose_settings.input, name) for name in mapping} == mapping
    generator = TelemetryGenerator(GeneratorConfig(devices=5, seed=3))
    payloads = [payload for tick in generator.messages(4) for payload in tick]
    decoded = Decoder(compose_settings.input).decode_messages(payloads)
    assert decoded.rejects == []
    assert len(decoded.batch) == len(payloads) == 20


def test_image_bakes_in_the_demo_model_and_its_config(compose_settings: Settings) -> None:
    final = _copies(_final_stage())
    assert (_relative(BUNDLED_MODEL_DIR), str(compose_settings.model.path), True) in final
    assert ("deploy/compose/detector.toml", "/etc/stream-detector/detector.toml", True) in final
    assert '"/etc/stream-detector/detector.toml"' in dict(_final_stage())["CMD"]


@pytest.mark.parametrize("which", ["compose_settings", "k8s_settings"])
def test_the_image_model_loads_with_the_deployed_config(
    which: str, request: pytest.FixtureRequest
) -> None:
    settings: Settings = request.getfixturevalue(which)
    artefact = load_artefact(BUNDLED_MODEL_DIR, settings, torch.device("cpu"))
    assert tuple(artefact.metadata.features) == settings.input.value_fields


@pytest.mark.parametrize("which", ["compose_settings", "k8s_settings"])
def test_deployed_config_serves_with_the_demo_tuning(
    which: str, request: pytest.FixtureRequest
) -> None:
    settings: Settings = request.getfixturevalue(which)
    for section, values in preset("iot_demo").items():
        if section == "train":  # the bundled model is trained already
            continue
        assert {name: getattr(getattr(settings, section), name) for name in values} == values


# -- the Dockerfile --------------------------------------------------------------------------------


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def _copies(instructions: list[tuple[str, str]]) -> list[tuple[str, str, bool]]:
    """(source, destination, from the build context?) for every COPY."""
    copies = []
    for word, args in instructions:
        if word == "COPY":
            *sources, destination = args.split()
            from_context = not any(s.startswith("--from=") for s in sources)
            copies += [(s, destination, from_context) for s in sources if not s.startswith("--")]
    return copies


def test_dockerfile_copies_only_files_that_exist() -> None:
    sources = [s for s, _, from_context in _copies(_dockerfile_instructions()) if from_context]
    assert sources, "the Dockerfile copies nothing from the build context"
    assert [s for s in sources if not (REPO / s).exists()] == []


def test_dockerfile_stages_build_on_the_base_image_argument() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    stages: set[str] = set()
    for word, args in instructions:
        if word == "FROM":
            image, *alias = args.split()
            assert image == "${BASE_IMAGE}" or image in stages, f"FROM {args}"
            if alias:
                stages.add(alias[-1])
    assert dict(_final_stage())["FROM"] == "${BASE_IMAGE}"


def test_dockerfile_runs_the_cli_as_a_numeric_non_root_user() -> None:
    final = dict(_final_stage())
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert final["ENTRYPOINT"] == '["stream-detector"]'
    assert final["CMD"].startswith('["run", "--config"')


def test_dockerfile_offers_cpu_by_default_and_cuda_by_argument() -> None:
    instructions = _dockerfile_instructions()
    args = dict(a.split("=", 1) for word, a in instructions if word == "ARG" and "=" in a)
    assert args["VARIANT"] == "cpu"
    assert args["TORCH_VERSION"] == "2.13.0"
    text = DOCKERFILE.read_text()
    assert "cpu) source=" in text and "cuda) source=" in text


# -- compose ---------------------------------------------------------------------------------------


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged, validated configuration as `docker-compose config` prints it."""
    command = _compose_command()
    _require(
        command is not None,
        "docker-compose",
        "apt-get install docker-compose (scripts/validate-deploy.sh does it)",
    )
    _require(yaml is not None, "PyYAML", "install the test extras: pip install -e '.[test]'")
    assert command is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "COMPOSE_"))}
    argv = [*command, "--project-directory", str(REPO)]
    for file in files:
        argv += ["-f", str(file)]
    result = subprocess.run(
        [*argv, "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**clean, **(env or {})},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"{' '.join(argv)} config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def base_compose() -> dict[str, Any]:
    return compose_config(BASE_COMPOSE)


@pytest.fixture(scope="module")
def tansu_compose() -> dict[str, Any]:
    return compose_config(BASE_COMPOSE, TANSU_OVERRIDE)


CORE_SERVICES = {"kafka", "topics", "detector", "generator"}
# A profile of their own: their images come from a registry, so a plain `up` (and
# scripts/deploy-test.sh, which runs with none) leaves them out.
ALERTING_SERVICES = {"prometheus", "alertmanager", "forwarder"}
ALERTING = {"COMPOSE_PROFILES": "alerting"}


@pytest.fixture(scope="module")
def alerting_compose() -> dict[str, Any]:
    return compose_config(BASE_COMPOSE, env=ALERTING)


@pytest.fixture(scope="module")
def tansu_alerting_compose() -> dict[str, Any]:
    return compose_config(BASE_COMPOSE, TANSU_OVERRIDE, env=ALERTING)


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # compose v2 may print KEY=VALUE items
        environment = dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def _healthcheck_probe(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck") or {}
    assert not check.get("disable"), "health check disabled"
    test = check.get("test")
    assert isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"), test
    return test


@pytest.mark.parametrize("stack", ["base_compose", "tansu_compose"])
def test_compose_starts_in_order_with_health_checks(
    stack: str, request: pytest.FixtureRequest
) -> None:
    services = request.getfixturevalue(stack)["services"]
    # docker-compose 1.29 prints the services of inactive profiles too; `docker compose` does not.
    assert {name for name, s in services.items() if not s.get("profiles")} == CORE_SERVICES
    assert set(services) <= CORE_SERVICES | ALERTING_SERVICES
    _healthcheck_probe(services["kafka"])
    probe = " ".join(_healthcheck_probe(services["detector"]))
    port = _env(services["detector"])["SD_OBSERVABILITY__HTTP_PORT"]
    assert f"127.0.0.1:{port}/readyz" in probe
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("detector", "generator"):
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully"
        )
    images = {services[name]["image"] for name in ("topics", "detector", "generator")}
    assert len(images) == 1, "topics, detector and generator must share the detector image"
    assert all(services[name].get("init") for name in ("topics", "detector", "generator"))


def test_compose_commands_are_ones_the_cli_accepts(
    base_compose: dict[str, Any], compose_settings: Settings
) -> None:
    services = base_compose["services"]
    assert build_parser().parse_args(services["detector"]["command"]).command == "run"
    generate = build_parser().parse_args(services["generator"]["command"])
    assert generate.command == "generate"
    assert generate.topic in compose_settings.kafka.input_topics


def test_compose_grace_period_exceeds_the_drain_timeout(
    base_compose: dict[str, Any], compose_settings: Settings
) -> None:
    grace = _seconds(base_compose["services"]["detector"]["stop_grace_period"])
    assert grace > compose_settings.kafka.shutdown_timeout_s


def test_compose_topic_step_reads_the_detector_config(base_compose: dict[str, Any]) -> None:
    services = base_compose["services"]
    config_args = services["topics"]["command"]
    detector_config = services["detector"]["command"]
    assert config_args[config_args.index("--config") + 1] == (
        detector_config[detector_config.index("--config") + 1]
    )
    clients = [n for n, s in services.items() if s["image"] == services["detector"]["image"]]
    bootstrap = {_env(services[n])["SD_KAFKA__BOOTSTRAP_SERVERS"] for n in clients}
    assert bootstrap == {"kafka:19092"}
    assert "INTERNAL://kafka:19092" in _env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]


@pytest.mark.parametrize("stack", ["tansu_compose", "tansu_alerting_compose"])
def test_tansu_override_runs_everything_locally_on_the_host_network(
    stack: str, request: pytest.FixtureRequest
) -> None:
    services = request.getfixturevalue(stack)["services"]
    assert {s.get("network_mode") for s in services.values()} == {"host"}
    # `config` accepts published ports with host networking, but `up` refuses to start them.
    assert [name for name, s in services.items() if s.get("ports")] == []
    assert services["kafka"]["image"] == f"stream-detector/tansu:{tansu_version()}"
    command = services["kafka"]["command"]
    listener = command[command.index("--listener-url") + 1]
    assert listener == "tcp://127.0.0.1:9092"
    assert command[command.index("--advertised-listener-url") + 1] == listener
    for name in ("topics", "detector", "generator", "forwarder"):
        if name in services:
            assert _env(services[name])["SD_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"
    for name in ("prometheus", "alertmanager"):
        if name in services:
            listen = _flag(services[name]["command"], "--web.listen-address")
            assert listen.startswith("127.0.0.1:"), f"{name} listens on {listen}"


def test_tansu_override_ports_follow_the_environment() -> None:
    services = compose_config(
        BASE_COMPOSE, TANSU_OVERRIDE, env={"SD_BROKER_PORT": "19093", "SD_METRICS_PORT": "19309"}
    )["services"]
    assert "tcp://127.0.0.1:19093" in services["kafka"]["command"]
    assert "tcp://127.0.0.1:19093" in _healthcheck_probe(services["kafka"])
    detector = services["detector"]
    assert _env(detector)["SD_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:19093"
    assert _env(detector)["SD_OBSERVABILITY__HTTP_PORT"] == "19309"
    assert "127.0.0.1:19309/readyz" in " ".join(_healthcheck_probe(detector))


# -- compose: alerting ----------------------------------------------------------------------------


def _flag(command: list[str], name: str) -> str:
    """The value of a `--name=value` argument, given exactly once."""
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}= not given once in {command}"
    return values[0]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the bind mounts (compose 1.29 prints the short syntax,
    `docker compose` the long one)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[target] = Path(source)
    return mounts


@pytest.mark.parametrize("stack", ["alerting_compose", "tansu_alerting_compose"])
def test_alerting_profile_adds_prometheus_alertmanager_and_the_forwarder(
    stack: str, request: pytest.FixtureRequest
) -> None:
    services = request.getfixturevalue(stack)["services"]
    assert set(services) == CORE_SERVICES | ALERTING_SERVICES
    assert all(services[name]["profiles"] == ["alerting"] for name in ALERTING_SERVICES)
    for name in ("prometheus", "alertmanager"):
        repository, _, tag = services[name]["image"].partition(":")
        assert repository == f"prom/{name}"
        assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"{name}: pin a release, not {tag!r}"
        port = _port(_flag(services[name]["command"], "--web.listen-address"))
        assert f"http://127.0.0.1:{port}/-/ready" in _healthcheck_probe(services[name])
    # One Alertmanager, not a cluster: no gossip port taken, no peers looked for.
    assert _flag(services["alertmanager"]["command"], "--cluster.listen-address") == ""
    forwarder, detector = services["forwarder"], services["detector"]
    assert forwarder["image"] == detector["image"] and forwarder.get("init")
    assert _env(forwarder)["SD_KAFKA__BOOTSTRAP_SERVERS"] == (
        _env(detector)["SD_KAFKA__BOOTSTRAP_SERVERS"]
    )
    assert forwarder["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert forwarder["depends_on"]["alertmanager"]["condition"] == "service_healthy"


@pytest.mark.parametrize("stack", ["alerting_compose", "tansu_alerting_compose"])
def test_prometheus_scrapes_the_detector_and_alerts_where_alertmanager_listens(
    stack: str, request: pytest.FixtureRequest
) -> None:
    services = request.getfixturevalue(stack)["services"]
    prometheus, alertmanager = services["prometheus"], services["alertmanager"]
    # On the host network every address is the loopback; on compose's network, a service name.
    host_network = prometheus.get("network_mode") == "host"

    def address(service: str) -> str:
        return "127.0.0.1" if host_network else service

    config_path = Path(_flag(prometheus["command"], "--config.file"))
    mounts = _mounts(prometheus)
    assert mounts[str(config_path)].parent == PROMETHEUS_DIR
    config = yaml.safe_load(mounts[str(config_path)].read_text())
    # Rule files are read relative to the config file: they must be mounted beside it.
    for rule_file in config["rule_files"]:
        assert mounts[str(config_path.parent / rule_file)] == PROMETHEUS_DIR / rule_file

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    rule_jobs = set(re.findall(r'up\{job="([^"]+)"\}', (PROMETHEUS_DIR / "rules.yml").read_text()))
    assert rule_jobs == {"stream-detector"} and "stream-detector" in jobs
    scraped = set()
    for static in jobs["stream-detector"].get("static_configs", []):
        scraped |= {(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in static["targets"]}
    for dns in jobs["stream-detector"].get("dns_sd_configs", []):
        scraped |= {(name, dns["port"]) for name in dns["names"]}
    metrics_port = int(_env(services["detector"])["SD_OBSERVABILITY__HTTP_PORT"])
    assert scraped == {(address("detector"), metrics_port)}

    alertmanager_port = _port(_flag(alertmanager["command"], "--web.listen-address"))
    alertmanager_url = f"{address('alertmanager')}:{alertmanager_port}"
    targets = [
        target
        for alertmanagers in config["alerting"]["alertmanagers"]
        for static in alertmanagers["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [alertmanager_url]
    assert _mounts(alertmanager)[_flag(alertmanager["command"], "--config.file")] == (
        ALERTMANAGER_CONFIG
    )
    forward = services["forwarder"]["command"]
    assert forward[forward.index("--url") + 1] == f"http://{alertmanager_url}"


def test_forwarder_command_is_one_the_cli_accepts(alerting_compose: dict[str, Any]) -> None:
    services = alerting_compose["services"]
    command, detector = services["forwarder"]["command"], services["detector"]["command"]
    assert command[:2] == ["forward", "alertmanager"]
    # The same config file as the detector, so the same alert topic.
    assert command[command.index("--config") + 1] == detector[detector.index("--config") + 1]
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "forward" not in commands.choices:
        pytest.skip("this CLI has no `forward` command yet")
    assert parser.parse_args(command).command == "forward"


def test_ports_override_publishes_the_uis_on_the_loopback_only() -> None:
    services = compose_config(BASE_COMPOSE, PORTS_OVERRIDE, env=ALERTING)["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"prometheus", "alertmanager"}
    for name, ports in published.items():
        listen = _port(_flag(services[name]["command"], "--web.listen-address"))
        for port in ports:
            if isinstance(port, str):  # 127.0.0.1:9090:9090/tcp
                host_ip, _, target = port.split("/")[0].split(":")
            else:
                host_ip, target = port["host_ip"], port["target"]
            assert host_ip == "127.0.0.1" and int(target) == listen, f"{name}: {port}"


# -- the topic step --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def create_topics() -> ModuleType:
    path = REPO / "deploy" / "compose" / "create_topics.py"
    spec = importlib.util.spec_from_file_location("create_topics", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_topic_step_creates_every_topic_the_detector_needs(
    create_topics: ModuleType, compose_settings: Settings
) -> None:
    settings = compose_settings.model_copy(
        update={"kafka": compose_settings.kafka.model_copy(update={"input_topics": ("a", "b")})}
    )
    kafka, changelog = settings.kafka, settings.state.changelog_topic
    assert create_topics.topic_partitions(settings, 6) == {
        "a": 6,
        "b": 6,
        kafka.alert_topic: 6,
        changelog: 6,
        kafka.dead_letter_topic: 1,
    }
    without_state = settings.model_copy(
        update={"state": settings.state.model_copy(update={"store": "none"})}
    )
    assert changelog not in create_topics.topic_partitions(without_state, 6)


# -- Kubernetes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """Every manifest under deploy/k8s by kind, one document per kind."""
    _require_yaml_tools()
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in documents, f"second {document['kind']} in {path.name}"
            documents[document["kind"]] = document | {"__file__": path.name}
    return documents


def _resource(manifests: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    return {k: v for k, v in manifests[kind].items() if k != "__file__"}


@pytest.fixture(scope="module")
def k8s_settings(manifests: dict[str, dict[str, Any]], tmp_path_factory: Any) -> Settings:
    config = tmp_path_factory.mktemp("k8s") / "detector.toml"
    config.write_text(manifests["ConfigMap"]["data"]["detector.toml"])
    return load_settings(config)


@pytest.fixture(scope="module")
def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


CORE_KINDS = ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kind", CORE_KINDS)
def test_manifest_matches_the_kubernetes_schema(
    manifests: dict[str, dict[str, Any]], kind: str, version: str
) -> None:
    wanted = kubernetes_validate.latest_version() if version == "latest" else version
    kubernetes_validate.validate(_resource(manifests, kind), wanted, strict=True)


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ("spec", "replicass"), 3),
        ("Deployment", ("spec", "template", "spec", "terminationGracePeriodSeconds"), "45"),
        ("PodDisruptionBudget", ("spec", "maxUnavailabel"), 1),
    ],
)
def test_schema_check_catches_a_broken_manifest(
    manifests: dict[str, dict[str, Any]], kind: str, path: tuple[str, ...], value: Any
) -> None:
    broken = copy.deepcopy(_resource(manifests, kind))
    node = broken
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


# The fields of KEDA's ScaledObject (keda.sh/v1alpha1) this project uses, closed to anything else:
# the CRD's own schema is not bundled with kubernetes-validate.
_KAFKA_TRIGGER_METADATA = {
    "type": "object",
    "required": ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
    "additionalProperties": False,
    "properties": {
        name: {"type": "string"}
        for name in (
            "bootstrapServers",
            "consumerGroup",
            "topic",
            "lagThreshold",
            "activationLagThreshold",
            "offsetResetPolicy",
            "allowIdleConsumers",
            "scaleToZeroOnInvalidOffset",
            "excludePersistentLag",
            "limitToPartitionsWithLag",
            "sasl",
            "tls",
        )
    },
}
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "kafka"},
                            "metadata": _KAFKA_TRIGGER_METADATA,
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_scaled_object_matches_the_keda_fields(manifests: dict[str, dict[str, Any]]) -> None:
    scaled = _resource(manifests, "ScaledObject")
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    broken = copy.deepcopy(scaled)
    broken["spec"]["triggers"][0]["metadata"]["lagThreshhold"] = "10"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT_SCHEMA)


def test_kustomization_applies_every_manifest(manifests: dict[str, dict[str, Any]]) -> None:
    listed = set(manifests["Kustomization"]["resources"])
    on_disk = {m["__file__"] for kind, m in manifests.items() if kind != "Kustomization"}
    assert listed == on_disk


def test_replicas_never_exceed_the_input_partitions(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment"]
    partitions = int(deployment["metadata"]["annotations"]["stream-detector.io/input-partitions"])
    scaled = manifests["ScaledObject"]["spec"]
    assert 1 <= deployment["spec"]["replicas"] <= partitions
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= partitions
    assert scaled["triggers"][0]["metadata"]["allowIdleConsumers"] == "false"


def test_autoscaler_watches_the_detector_group_and_topic(
    manifests: dict[str, dict[str, Any]], k8s_settings: Settings
) -> None:
    scaled = manifests["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == manifests["Deployment"]["metadata"]["name"]
    assert scaled["scaleTargetRef"]["kind"] == "Deployment"
    for trigger in scaled["triggers"]:
        metadata = trigger["metadata"]
        assert metadata["consumerGroup"] == k8s_settings.kafka.group_id
        assert metadata["topic"] in k8s_settings.kafka.input_topics
        assert metadata["bootstrapServers"] == k8s_settings.kafka.bootstrap_servers
        # The service's consumer starts a new group at the earliest offset; lag must agree.
        assert metadata["offsetResetPolicy"] == "earliest"


def test_grace_period_exceeds_the_drain_timeout(
    manifests: dict[str, dict[str, Any]], k8s_settings: Settings
) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > k8s_settings.kafka.shutdown_timeout_s


def test_probes_and_service_use_the_configured_http_port(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any], k8s_settings: Settings
) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == k8s_settings.observability.http_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    service_ports = manifests["Service"]["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["metrics"]
    annotations = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == k8s_settings.observability.http_port


def test_selectors_match_the_pods(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment"]["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    selectors = [
        deployment["selector"]["matchLabels"],
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        manifests["Service"]["spec"]["selector"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()


def test_container_args_are_ones_the_cli_accepts(container: dict[str, Any]) -> None:
    assert build_parser().parse_args(container["args"]).command == "run"


def test_config_is_mounted_where_the_command_reads_it(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in manifests["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert Path(mounts[config_volume]) / config_path.name == config_path
    assert config_path.name in manifests["ConfigMap"]["data"]


def test_credentials_come_only_from_secrets(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    env = {item["name"]: item for item in container["env"]}
    password = env["SD_KAFKA__SASL_PASSWORD"]
    assert "value" not in password
    assert password["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "sasl_password" not in manifests["ConfigMap"]["data"]["detector.toml"].replace(
        "# sasl_password", ""
    )
    volumes = manifests["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("secret", {}).get("optional") is True for v in volumes)


def test_pods_run_as_the_image_user_without_privileges(
    container: dict[str, Any], manifests: dict[str, dict[str, Any]]
) -> None:
    pod_security = manifests["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    image_user = int(dict(_final_stage())["USER"].split(":")[0])
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == image_user
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]


def test_replicas_share_state_through_kafka(
    k8s_settings: Settings, compose_settings: Settings
) -> None:
    # Several replicas and pods that move: a local store would restore nothing after a rebalance.
    assert k8s_settings.state.store == compose_settings.state.store == "kafka"


# -- the scripts -----------------------------------------------------------------------------------


def _scripts() -> Iterator[Path]:
    yield REPO / "deploy" / "base" / "build-base.sh"
    yield REPO / "scripts" / "deploy-test.sh"
    yield REPO / "scripts" / "validate-deploy.sh"


@pytest.mark.parametrize("script", list(_scripts()), ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"
