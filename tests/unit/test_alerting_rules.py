"""The alerting side of the deployment, checked with the tools that will read it.

- deploy/prometheus/rules.yml through `promtool check rules`, and its unit tests
  (deploy/prometheus/rules_test.yml, input series that make every alert fire and not fire)
  through `promtool test rules`; the Prometheus configs through `promtool check config` and the
  Alertmanager config through `amtool check-config`.
- Every sd_* metric and label that the rules, their tests and the Grafana dashboard name must be
  in the service's own /metrics output, generated here in-process: a renamed metric, or a counter
  written without its `_total`, would otherwise leave an alert that can never fire and a panel
  that stays empty, and nothing would say so.
- The dashboard's queries go through Prometheus' parser too (as recording rules for promtool), and
  its JSON holds what Grafana's import needs.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages
(scripts/install-alerting.sh, which .ci/run calls). Without them the tests skip locally and fail
with CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.config import load_settings
from stream_detector.kafka.telemetry import ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
PROMETHEUS_CONFIGS = (PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus.host.yml")
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "stream-detector.json"
INSTALL_SCRIPT = REPO / "scripts" / "install-alerting.sh"
COMPOSE_CONFIG = REPO / "deploy" / "compose" / "detector.toml"
INSTALL_HINT = "run scripts/install-alerting.sh (Debian's prometheus and prometheus-alertmanager)"
SEVERITIES = {"critical", "warning", "info"}
# Labels Prometheus attaches to every scraped series, beside the service's own.
TARGET_LABELS = {"job", "instance"}
METRIC_NAME = re.compile(r"\bsd_[a-z0-9_]+")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _tool(name: str) -> str:
    """The tool's path; a missing one skips the test, or fails it in CI."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not on PATH: {INSTALL_HINT}"
    if _in_ci():
        pytest.fail(f"{message} (CI=true: the alerting files must be checked in CI)")
    pytest.skip(message)


def _run(*argv: str, cwd: Path = REPO) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _dashboard_targets() -> list[dict[str, Any]]:
    return [target for panel in _dashboard()["panels"] for target in panel["targets"]]


# -- the tools' own checks -------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    output = _run(_tool("promtool"), "check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in output


def test_rule_unit_tests_pass() -> None:
    # From the file's folder, so that its `rule_files: [rules.yml]` is found as Prometheus would.
    _run(_tool("promtool"), "test", "rules", RULES_TEST.name, cwd=PROMETHEUS_DIR)


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_promtool_accepts_the_prometheus_config(config: Path) -> None:
    output = _run(_tool("promtool"), "check", "config", str(config))
    assert f"SUCCESS: {len(_rules())} rules found" in output  # it loaded rules.yml beside it


def test_amtool_accepts_the_alertmanager_config() -> None:
    _run(_tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))


def test_anomalies_from_the_forwarder_take_their_own_route() -> None:
    """The route for the forwarder's alerts matches the alertname the forwarder posts."""
    forward = getattr(load_settings(COMPOSE_CONFIG), "forward", None)
    if forward is None:
        pytest.skip("this version has no [forward] settings yet")
    routes = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]["routes"]
    assert routes[0]["matchers"] == [f'alertname="{forward.alertname}"']
    # The service's own alerts are never caught by that route.
    assert all(rule["alert"] != forward.alertname for rule in _rules())


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Prometheus' parser sees each query as Grafana would send it, variables filled in."""
    filled = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}
    rules = []
    for n, target in enumerate(_dashboard_targets()):
        expr = target["expr"]
        for variable, value in filled.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a variable the test does not fill: {target['expr']}"
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(_tool("promtool"), "check", "rules", str(path))


def test_missing_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="scripts/install-alerting.sh"):
        _tool("promtool")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="scripts/install-alerting.sh"):
        _tool("promtool")


# -- the rules and their tests ---------------------------------------------------------------------


def test_every_alert_is_held_for_a_while_and_says_what_to_do() -> None:
    alerts = _rules()
    assert alerts and all("alert" in rule for rule in alerts), "recording rules belong elsewhere"
    names = [rule["alert"] for rule in alerts]
    assert len(set(names)) == len(names)
    for rule in alerts:
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{rule['alert']}: no for"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_has_unit_tests_that_fire_it_and_that_do_not() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in _rules()}
    assert fired == alerts
    assert quiet == alerts


# -- the names against the service's /metrics ------------------------------------------------------


@pytest.fixture(scope="module")
def exposition() -> tuple[set[str], set[str]]:
    """(sample names, label names) of the service's /metrics, as a running service serves it."""
    metrics = ServiceMetrics()
    # The labelled gauges have no sample until the service sets one: it does so for the loaded
    # model (its info and drift series) at start and for each assigned partition's lag.
    metrics.start_model("test")
    metrics.set_lag("events", 0, 0)
    text = generate_latest(metrics.registry).decode()
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def _label_names(expr: str) -> set[str]:
    """Label names a PromQL expression groups, joins or matches on."""
    names: set[str] = set()
    for group in re.findall(
        r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
    ):
        names.update(name.strip() for name in group.split(",") if name.strip())
    for matchers in re.findall(r"\{([^{}]*)\}", expr):
        names.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    return names


def test_the_name_check_sees_a_counter_without_its_suffix(
    exposition: tuple[set[str], set[str]],
) -> None:
    names, _ = exposition
    assert "sd_events_in_total" in names
    assert set(METRIC_NAME.findall("rate(sd_events_in[5m])")) - names == {"sd_events_in"}


@pytest.mark.parametrize("path", [RULES, RULES_TEST, DASHBOARD], ids=lambda p: p.name)
def test_every_metric_named_is_one_the_service_exports(
    path: Path, exposition: tuple[set[str], set[str]]
) -> None:
    names, _ = exposition
    used = set(METRIC_NAME.findall(path.read_text()))
    assert used, f"no sd_* metric in {path.name}"
    assert used - names == set(), f"not in the service's /metrics: {sorted(used - names)}"


def test_every_label_used_is_one_the_service_exports(
    exposition: tuple[set[str], set[str]],
) -> None:
    _, labels = exposition
    known = labels | TARGET_LABELS
    used: set[str] = set()
    for rule in _rules():
        used |= _label_names(rule["expr"])
        for text in rule["annotations"].values():
            used.update(re.findall(r"\$labels\.(\w+)", text))
    for target in _dashboard_targets():
        used |= _label_names(target["expr"])
        used.update(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            used.update(re.findall(r"label_values\([^,]*,\s*(\w+)\)", variable["definition"]))
    assert {"reason", "topic", "partition", "le", "model_version"} <= used  # the parsing works
    assert used - known == set(), f"labels the service does not export: {sorted(used - known)}"


# -- the dashboard ---------------------------------------------------------------------------------


def test_dashboard_is_importable_with_a_prometheus_datasource_variable() -> None:
    dashboard = _dashboard()
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None, "an id would clash on import"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"] == datasource, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(set(ref_ids)) == len(ref_ids), panel["title"]
        assert all(t["datasource"] == datasource and t["expr"] for t in panel["targets"])


def test_dashboard_shows_every_metric_the_service_exports_for_operators(
    exposition: tuple[set[str], set[str]],
) -> None:
    used = set(METRIC_NAME.findall(DASHBOARD.read_text()))
    wanted = {
        "sd_events_in_total",
        "sd_events_processed_total",
        "sd_rejects_total",
        "sd_dead_letters_total",
        "sd_alerts_total",
        "sd_open_episodes",
        "sd_keys_tracked",
        "sd_consumer_lag",
        "sd_batch_seconds_bucket",
        "sd_model_seconds_bucket",
        "sd_produce_in_flight",
        "sd_delivery_retries_total",
        "sd_model_info",
    }
    assert wanted <= used, f"not on the dashboard: {sorted(wanted - used)}"


# -- the install script ----------------------------------------------------------------------------


def test_install_script_parses_and_ci_runs_it() -> None:
    result = subprocess.run(
        ["bash", "-n", str(INSTALL_SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert os.access(INSTALL_SCRIPT, os.X_OK), f"{INSTALL_SCRIPT} is not executable"
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/install-alerting.sh" in ci
    assert ci.index("scripts/install-alerting.sh") < ci.index("make test")
