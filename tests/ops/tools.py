"""The operations tooling the ops tests drive (promtool, systemd-analyze), and what the
dashboards and alert rules reference. On a laptop without a tool its tests skip; in CI
(scripts/system-deps.sh installs them) they must run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "rules"
RULE_TESTS = ROOT / "config" / "prometheus" / "tests"
DASHBOARDS = ROOT / "config" / "grafana" / "dashboards"
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created", "_info")
# Grafana's variables, replaced by values PromQL can parse.
_GRAFANA_VARS = {"$__range": "1h", "$__rate_interval": "1m", "$__interval": "1m"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; scripts/system-deps.sh installs it.")
        pytest.skip(f"{name} is not installed (run scripts/system-deps.sh)")
    return path


def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=120
    )


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text("utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> dict[str, str]:
    """Every PromQL query of every dashboard (panels and variables), Grafana variables
    replaced, keyed by where it is."""
    queries: dict[str, str] = {}
    for name, board in dashboards().items():
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                queries[f"{name} / {panel['title']} / {target['refId']}"] = target["expr"]
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if variable.get("type") == "query" and query:
                queries[f"{name} / variable {variable['name']}"] = query
    return {where: _grafana_free(expr) for where, expr in queries.items()}


def _grafana_free(expr: str) -> str:
    for variable, value in _GRAFANA_VARS.items():
        expr = expr.replace(variable, value)
    match = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr.strip(), re.S)
    if match:
        expr = match.group(1)
    return re.sub(r"\$\w+", "x", expr)


def rule_expressions() -> dict[str, str]:
    exprs: dict[str, str] = {}
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text("utf-8"))["groups"]:
            for rule in group["rules"]:
                exprs[rule.get("alert") or rule["record"]] = rule["expr"]
    return exprs


def referenced_metrics(expressions: dict[str, str]) -> dict[str, set[str]]:
    """hocba_* metric names per expression (recording rules, with a colon, excluded)."""
    return {
        where: {
            name
            for name in IDENTIFIER.findall(re.sub(r'"[^"]*"', '""', expr))
            if name.startswith("hocba_") and ":" not in name
        }
        for where, expr in expressions.items()
    }


def exposed_names(scrape: str) -> set[str]:
    """Metric family and sample names in a Prometheus text exposition."""
    names: set[str] = set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE ") or line.startswith("# HELP "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def exists(name: str, exposed: set[str]) -> bool:
    if name in exposed:
        return True
    return any(name.endswith(s) and name.removesuffix(s) in exposed for s in SUFFIXES)
