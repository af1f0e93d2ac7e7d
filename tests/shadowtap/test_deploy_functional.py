"""deploy/: the examples users copy must work as written.

The Kubernetes manifest and the systemd unit parse, and the command lines they hold are accepted by
`shadowtap proxy --check-config`; every metric the Grafana dashboard queries is one a running proxy
exports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def check_config(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def as_check(args: list[str], config: Path) -> list[str]:
    """The same command line, validating instead of serving, with the config file at ``config``."""
    out = []
    for arg in args:
        out.append(str(config) if arg.endswith("shadowtap.yaml") else arg)
    return ["--check-config" if a == "--config" else a for a in out]


def test_kubernetes_sidecar_is_valid_and_its_command_is_accepted(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes-sidecar.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Deployment"}
    config = tmp_path / "shadowtap.yaml"
    config.write_text(kinds["ConfigMap"]["data"]["shadowtap.yaml"])
    containers = {c["name"]: c for c in kinds["Deployment"]["spec"]["template"]["spec"]["containers"]}
    command: list[str] = containers["shadowtap"]["command"]
    assert command[:2] == ["shadowtap", "proxy"]
    probes = containers["shadowtap"]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"

    result = check_config(as_check(command[1:], config), env={"SHADOWTAP_ADMIN_TOKEN": "t0ken"})
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout[result.stdout.index("{") :])
    assert effective["primary"] == "http://127.0.0.1:9000"
    assert effective["shadows"][0]["name"] == "v2"

    # The admin token is required: without it the same command is refused with one clear line.
    refused = check_config(as_check(command[1:], config), env={"SHADOWTAP_ADMIN_TOKEN": ""})
    assert refused.returncode == 2
    assert "SHADOWTAP_ADMIN_TOKEN" in refused.stderr and "Traceback" not in refused.stderr


def test_systemd_unit_command_is_accepted(tmp_path: Path) -> None:
    unit = (DEPLOY / "shadowtap-proxy.service").read_text()
    sections = re.findall(r"^\[(\w+)\]", unit, flags=re.M)
    assert sections == ["Unit", "Service", "Install"]
    exec_start = re.search(r"^ExecStart=(.+)$", unit, flags=re.M)
    assert exec_start is not None
    argv = shlex.split(exec_start.group(1))
    assert argv[0].endswith("/shadowtap") and argv[1] == "proxy"
    config = tmp_path / "shadowtap.yaml"
    config.write_text("shadows:\n  - name: v2\n    url: http://127.0.0.1:9001\n    sample_percent: 5\n")
    result = check_config(as_check(argv[1:], config))
    assert result.returncode == 0, result.stderr
    assert '"workers": 2' in result.stdout


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\b(shadowtap_[a-z_]+)\{", target["expr"]))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_grafana_dashboard_queries_metrics_the_proxy_exports(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    wanted = dashboard_metrics(dashboard)
    assert len(wanted) >= 8
    proxy = subprocess.Popen(
        [
            sys.executable, "-m", "shadowtap", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--primary", "http://127.0.0.1:9", "--shadow", "v2=http://127.0.0.1:9", "--tape", str(tmp_path / "tape"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
        admin = re.search(r"admin (http://127\.0\.0\.1:\d+)", line)
        assert admin is not None, f"no admin address in {line!r}"
        with urllib.request.urlopen(admin.group(1) + "/metrics", timeout=10) as response:
            exposition = response.read().decode()
    finally:
        proxy.terminate()
        proxy.communicate(timeout=30)
    exported = set(re.findall(r"^# HELP (shadowtap_[a-z_]+) ", exposition, flags=re.M))
    assert wanted <= exported, f"dashboard queries unknown metrics: {sorted(wanted - exported)}"
