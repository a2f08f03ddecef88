"""promtool and amtool on the shipped Prometheus/Alertmanager configs and rules.

The binaries come from deploy/local-stack/install-prometheus.sh (CI runs it); the
tests skip, saying so, only where they are not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INSTALL_HINT = "run `bash deploy/local-stack/install-prometheus.sh`"


def _run(tool: str, *args: str) -> str:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed; {INSTALL_HINT}")
    proc = subprocess.run(
        [tool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"{tool} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_promtool_check_rules() -> None:
    out = _run("promtool", "check", "rules", "prometheus/rules/driftwarden.rules.yml")
    assert "SUCCESS: 9 rules found" in out


def test_promtool_check_config() -> None:
    out = _run("promtool", "check", "config", "prometheus/prometheus.yml")
    assert "is valid prometheus config file syntax" in out


def test_promtool_test_rules() -> None:
    tests = sorted(str(p.relative_to(DEPLOY)) for p in (DEPLOY / "prometheus/tests").glob("*.yml"))
    assert tests
    out = _run("promtool", "test", "rules", *tests)
    assert "SUCCESS" in out


def test_amtool_check_config() -> None:
    out = _run("amtool", "check-config", "alertmanager/alertmanager.yml")
    assert "SUCCESS" in out


def test_every_rule_is_unit_tested() -> None:
    import yaml

    rules = yaml.safe_load((DEPLOY / "prometheus/rules/driftwarden.rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested: set[str] = set()
    for path in (DEPLOY / "prometheus/tests").glob("*.yml"):
        for t in yaml.safe_load(path.read_text())["tests"]:
            tested |= {a["alertname"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    assert names == tested
