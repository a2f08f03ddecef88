"""The container, compose and Kubernetes files, validated as far as this machine allows.

What is checked here: the Kubernetes manifests (kustomization rendered by hand: its
namespace, labels and image are applied) against the Kubernetes OpenAPI schemas with
kubernetes-validate (strict); the ServiceMonitor (a Prometheus Operator CRD, which
kubernetes-validate has no schema for) against a minimal schema of the fields we use;
the compose file against the vendored Compose Specification schema; promtool on the
compose Prometheus config; the wiring between files. Not checked: building the image
and running the compose stack or the manifests (no Docker engine or cluster here).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from monitor.config.schema import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSIONS = ("1.29", "1.33")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")

# The fields of monitoring.coreos.com/v1 ServiceMonitor this deployment uses.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object"}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def _rendered() -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/kubernetes`` for the features the kustomization uses."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization) <= {
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "images",
        "resources",
    }
    extra = {k: v for item in kustomization.get("labels", []) for k, v in item["pairs"].items()}
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            doc = copy.deepcopy(doc)
            meta = doc["metadata"]
            if doc["kind"] != "Namespace":
                meta["namespace"] = kustomization["namespace"]
            meta["labels"] = {**meta.get("labels", {}), **extra}
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                c["image"] = images.get(c["image"], c["image"])
            out.append(doc)
    return out


def _by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _rendered() if d["kind"] == kind]
    return doc


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    kinds = set()
    for doc in _rendered():
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
    }


def test_validation_catches_a_bad_manifest() -> None:
    bad = _by_kind("Deployment")
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    sm = _by_kind("ServiceMonitor")
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sm, SERVICE_MONITOR_SCHEMA)


def test_deployment_wiring() -> None:
    dep = _by_kind("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert dep["spec"]["replicas"] >= 2
    for kind in ("Service", "PodDisruptionBudget"):
        sel = _by_kind(kind)["spec"]["selector"]
        assert sel.get("matchLabels", sel).items() <= pod_labels.items(), kind
    svc_ports = {p["name"] for p in _by_kind("Service")["spec"]["ports"]}
    sm = _by_kind("ServiceMonitor")
    assert (
        sm["spec"]["selector"]["matchLabels"].items()
        <= _by_kind("Service")["metadata"]["labels"].items()
    )
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= svc_ports
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DRIFTWARDEN_METRICS_LISTEN"].endswith(f":{ports['metrics']}")
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    ctx = dep["spec"]["template"]["spec"]["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"]
    assert c["image"] == "driftwarden:0.1.0"

    # Every ${VAR} of the configuration comes from the container's env or the Secret,
    # and the configuration validates with them set.
    config_text = _by_kind("ConfigMap")["data"]["driftwarden.yaml"]
    secret = _by_kind("Secret")
    assert [s["secretRef"]["name"] for s in c["envFrom"]] == [secret["metadata"]["name"]]
    provided = set(env) | set(secret["stringData"])
    assert set(ENV_REF.findall(config_text)) <= provided
    fake_env = {k: "x" for k in provided} | {k: v for k, v in env.items() if v}
    fake_env["WEBHOOK_URL"] = "https://on-call.example.com/x"
    config = parse_config(yaml.safe_load(config_text), env=fake_env)
    assert config.metrics.port == ports["metrics"]
    assert config.kafka["security.protocol"] == "SASL_SSL"


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


def test_compose_file_validates_against_the_compose_spec() -> None:
    import json

    schema = json.loads((DEPLOY / "schemas/vendor/compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, errors
    bad = _compose()
    bad["services"]["grafana"]["volumez"] = []
    assert list(validator.iter_errors(bad)), "the schema must reject unknown keys"


def test_compose_wiring() -> None:
    services = _compose()["services"]
    assert {"kafka", "driftwarden", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["grafana"]["image"].startswith("grafana/grafana:11.")
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    mounts = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert "/etc/grafana/provisioning" in mounts
    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/driftwarden.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] in mounts
    build = services["driftwarden"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    config = load_config(DEPLOY / "compose/driftwarden.yaml", env={})
    assert config.metrics.listen == "0.0.0.0:9108"
    prom_cmd = services["prometheus"]["command"]
    prom_config = next(a for a in prom_cmd if a.startswith("--config.file=")).split("/")[-1]
    prom = yaml.safe_load((DEPLOY / "prometheus" / prom_config).read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["driftwarden:9108"]
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed; run deploy/local-stack/install-prometheus.sh")
    proc = subprocess.run(
        ["promtool", "check", "config", f"prometheus/{prom_config}"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    user = [ln.split()[1] for ln in lines if ln.startswith("USER ")][-1]
    assert user.split(":")[0] not in {"0", "root"}
    assert "HEALTHCHECK" in text and "/healthz" in text.split("HEALTHCHECK", 1)[1]
    assert not re.search(r"\b(curl|wget)\b|^ADD\s+https?://", text, re.M), "no downloads"
    assert 'ENTRYPOINT ["driftwarden"]' in text
    for ln in lines:
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), src
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = {
        src.rstrip("/")
        for ln in lines
        if ln.startswith("COPY ") and "--from" not in ln
        for src in ln.split()[1:-1]
    }
    assert copied <= allowed, copied - allowed


def test_promtool_checks_every_generated_rules_file() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed; run deploy/local-stack/install-prometheus.sh")
    files = sorted(str(p.relative_to(DEPLOY)) for p in (DEPLOY / "prometheus/rules").glob("*.yml"))
    assert len(files) >= 2
    proc = subprocess.run(
        ["promtool", "check", "rules", *files],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(files)
