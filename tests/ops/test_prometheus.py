"""Alert rules: valid, unit-tested with `promtool test rules`; dashboards' queries parse."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.ops.tools import (
    ROOT,
    RULE_TESTS,
    RULES,
    dashboard_queries,
    dashboards,
    rule_expressions,
    run,
    tool,
)


def test_rules_are_valid() -> None:
    result = run(tool("promtool"), "check", "rules", *sorted(RULES.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", *sorted(RULE_TESTS.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for path in RULE_TESTS.glob("*.yml")
        for test in yaml.safe_load(path.read_text("utf-8"))["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {name for name in rule_expressions() if ":" not in name}
    assert alerts - tested == set()


def test_the_scrape_config_is_valid() -> None:
    config = ROOT / "config" / "prometheus" / "prometheus.yml"
    result = run(tool("promtool"), "check", "config", "--syntax-only", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    # Given every query of the dashboards, as recording rules promtool can check
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:query_{n}", "expr": q} for n, q in enumerate(queries.values())]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), "utf-8")

    # When promtool parses them
    result = run(tool("promtool"), "check", "rules", path)

    # Then every one is valid PromQL
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(queries) > 30


def test_dashboards_are_provisionable() -> None:
    boards = dashboards()
    assert set(boards) == {
        "hocba-overview.json",
        "hocba-deadlines.json",
        "hocba-submissions.json",
    }
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)
    for board in boards.values():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(set(ids)) == len(ids), board["uid"]
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "prometheus"
    provisioning = ROOT / "config" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "hocba-signer.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
