"""The district's checks: the real alert rules and the real panel query, run by promtool on
the series the daemon's monitor exported, against the simulator's ground truth.

Each checkpoint becomes one promtool test: its scrape held for 65 minutes (the rules'
`for: 1h` must elapse), the alerts expected exactly as the ground truth names them, and
the "Will miss the next deadline" panel's queries expected to list exactly the schools
the ground truth lists. The rules are the repository's, with their annotations left
out (promtool would compare the summaries' text, which is not what is checked here);
expressions, `for` and labels are unchanged.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tools.district.model import Truth

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "rules" / "hocba-foresight.rules.yml"
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "hocba-deadlines.json"
PANEL = "Will miss the next deadline"
HELD_MINUTES = 65
EVAL = f"{HELD_MINUTES - 1}m"
# What the rules and the panel read; the rest of the scrape is left out of the input.
FAMILIES = re.compile(
    r"^hocba_(school_.*|records_issued|deadline_timestamp_seconds|foresight_clock_timestamp_seconds)$"
)
ALERTS = {
    "HocbaSchoolNotStarted": "not_started",
    "HocbaSchoolAtRiskOfMissingDeadline": "too_slow",
    "HocbaSchoolStuckInStage": "stuck",
    "HocbaSchoolPackageRejected": "rejected",
    "HocbaSchoolMissedDeadline": "missed",
}
SEVERITY = {"HocbaSchoolPackageRejected": "critical", "HocbaSchoolMissedDeadline": "critical"}
KEY = ("school", "academic_year", "round")


def series(scrape: str) -> list[tuple[str, float]]:
    """(`name{labels}`, value) of the scrape's samples the checks need, as Prometheus
    would store them (with instance and job)."""
    found: list[tuple[str, float]] = []
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            wanted = FAMILIES.match(sample.name) or (
                sample.name == "hocba_records"
                and sample.labels.get("state") == "rejected_by_ministry"
            )
            if not wanted:
                continue
            labels = {**sample.labels, "instance": "district:9464", "job": "hocba-signer"}
            text = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            found.append((f"{sample.name}{{{text}}}", sample.value))
    return found


def _held(value: float) -> str:
    if math.isinf(value):
        return f"{'' if value > 0 else '-'}Inf+0x{HELD_MINUTES}"
    return f"{value!r}+0x{HELD_MINUTES}"


def panel_queries() -> dict[str, str]:
    board = json.loads(DASHBOARD.read_text("utf-8"))
    panel = next(p for p in board["panels"] if p["title"] == PANEL)
    return {t["refId"]: t["expr"] for t in panel["targets"]}


def _labels(key: Iterable[str], names: tuple[str, ...] = KEY) -> dict[str, str]:
    return dict(zip(names, key, strict=True))


def test_case(scrape: str, truth: Truth) -> dict[str, Any]:
    """One promtool test: the checkpoint's series, the alerts and panel rows it must give."""
    cases = []
    for alert, attribute in ALERTS.items():
        expected = getattr(truth, attribute)
        names = (*KEY, "state") if attribute == "stuck" else KEY
        severity = SEVERITY.get(alert, "warning")
        cases.append(
            {
                "eval_time": EVAL,
                "alertname": alert,
                "exp_alerts": [
                    {"exp_labels": {**_labels(k, names), "severity": severity}}
                    for k in sorted(expected)
                ],
            }
        )
    queries = panel_queries()
    rows = sorted(truth.will_miss_next.items())
    promql = [
        _expr_test(queries["B"], [(k, started) for k, (started, _) in rows]),
        _expr_test(queries["D"], [(k, remaining) for k, (_, remaining) in rows]),
    ]
    return {
        "interval": "1m",
        "input_series": [{"series": name, "values": _held(v)} for name, v in series(scrape)],
        "alert_rule_test": cases,
        "promql_expr_test": promql,
    }


def _expr_test(expr: str, rows: list[tuple[tuple[str, str, str], int]]) -> dict[str, Any]:
    samples = [
        {"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in _labels(key).items()) + "}",
         "value": value}
        for key, value in rows
    ]  # fmt: skip
    return {"expr": expr, "eval_time": EVAL, "exp_samples": samples}


def rules_without_annotations(path: Path) -> Path:
    rules = yaml.safe_load(RULES.read_text("utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path.write_text(yaml.safe_dump(rules, sort_keys=False), "utf-8")
    return path


def run_promtool(tests: list[dict[str, Any]], workdir: Path) -> tuple[bool, str]:
    """Run the tests; (passed, promtool's report, trimmed)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return False, "promtool is not installed (scripts/system-deps.sh installs it)"
    rules = rules_without_annotations(workdir / "foresight.rules.yml")
    spec = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}
    test_file = workdir / "district.test.yml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False, width=1000), "utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = (result.stdout + result.stderr).strip()
    return result.returncode == 0, report[-4000:]
