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
import urllib.error
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


def _manifest() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes-sidecar.yaml").read_text()) if d]


def _pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]


def test_kubernetes_manifest_matches_the_kubernetes_schema() -> None:
    # The schema of the API server, bundled with kubernetes-validate: no cluster needed. Strict mode
    # refuses fields the schema does not know (a typo in a field name would be dropped silently).
    import kubernetes_validate

    docs = _manifest()
    assert [d["kind"] for d in docs] == ["Secret", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Job"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_kubernetes_manifest_defines_everything_it_refers_to() -> None:
    docs = _manifest()
    defined = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    secret = defined[("Secret", "shop-shadowtap")]
    for spec in _pod_specs(docs):
        volumes = {v["name"]: v for v in spec["volumes"]}
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in defined
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in defined
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, mount
            env_names = {e["name"] for e in container.get("env", [])}
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] == "shop-shadowtap" and ref["key"] in secret["stringData"], ref
            for mount in container.get("volumeMounts", []):
                for variable in re.findall(r"\$\((\w+)\)", mount.get("subPathExpr", "")):
                    assert variable in env_names, f"{mount['subPathExpr']} needs env {variable}"
            ports = {p.get("name") for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports
    # Every pod writes its own folder of the shared claim, and the diff Job reads them all.
    deployment, job = _pod_specs(docs)
    (tapes,) = [m for m in deployment["containers"][1]["volumeMounts"] if m["name"] == "tapes"]
    assert tapes["subPathExpr"] == "$(POD_NAME)"
    assert "/tapes/*/tape" in job["containers"][0]["command"][-1]
    config = yaml.safe_load(defined[("ConfigMap", "shop-shadowtap")]["data"]["shadowtap.yaml"])
    assert config["record"]["tape"].startswith(tapes["mountPath"] + "/")


def test_kubernetes_sidecar_command_is_accepted(tmp_path: Path) -> None:
    kinds = {d["kind"]: d for d in _manifest()}
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


def test_kubernetes_sidecar_can_be_scraped_by_annotation_and_keeps_the_kill_switch_guarded(tmp_path: Path) -> None:
    # The pod's config, run for real (two workers, as the manifest says) with loopback addresses: the
    # annotations' port serves /metrics without a token, as Prometheus scrapes it; the flags do not.
    kinds = {d["kind"]: d for d in _manifest()}
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["shadowtap.yaml"])
    annotations = kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == config["admin"]["listen"].rpartition(":")[2]
    config["listen"] = "127.0.0.1:0"
    config["admin"]["listen"] = "127.0.0.1:0"
    config["primary"] = "http://127.0.0.1:9"
    config["shadows"][0]["url"] = "http://127.0.0.1:9"
    config["record"]["tape"] = str(tmp_path / "tape")
    path = tmp_path / "shadowtap.yaml"
    path.write_text(yaml.safe_dump(config))
    containers = {c["name"]: c for c in kinds["Deployment"]["spec"]["template"]["spec"]["containers"]}
    command = [str(path) if a.endswith("shadowtap.yaml") else a for a in containers["shadowtap"]["command"][1:]]
    proxy = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SHADOWTAP_ADMIN_TOKEN": "t0ken", "SHADOWTAP_REDACTION_KEY": "k3y"},
    )
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
        admin = re.search(r"admin (http://127\.0\.0\.1:\d+) workers 2", line)
        assert admin is not None, f"no admin address for two workers in {line!r}"
        with urllib.request.urlopen(admin.group(1) + annotations["prometheus.io/path"], timeout=10) as response:
            assert response.status == 200 and 'shadowtap_worker_up{worker="1"} 1.0' in response.read().decode()
        for path_ in ("/flags", "/stats"):
            try:
                urllib.request.urlopen(admin.group(1) + path_, timeout=10)
                raise AssertionError(f"{path_} answered without the token")
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
    finally:
        proxy.terminate()
        proxy.communicate(timeout=60)
    assert proxy.returncode == 0


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
    # The live diff row: the differing rate, signatures by severity and the live differ's drops, from
    # the metrics a proxy with a shadow and a tape (live diff on by default) exports.
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert any("Live diff" in title for title in rows)
    diff_panels = dashboard_metrics({"panels": [p for p in dashboard["panels"] if p["gridPos"]["y"] > 40]})
    live_metrics = {"shadowtap_diff_pairs_total", "shadowtap_diff_signatures", "shadowtap_live_diff_exchanges_total"}
    assert live_metrics <= diff_panels
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
