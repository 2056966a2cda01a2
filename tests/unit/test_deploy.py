"""deploy/ cannot drift from the farm: every file parses, every `farm` command in it parses with the
CLI's own parser, every FARM_* variable in it is a setting, and the manifests carry the probes, the
GPU limits and a grace period that covers the worker's drain. (Docker has no daemon on this machine:
the images are not built here.)"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from farm.cli import build_parser
from farm.config import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Read by the `farm submit`, `farm batch`, `farm workers` and `farm dispatch` clients, not settings.
CLIENT_VARIABLES = {"FARM_URL", "FARM_API_KEY"}


def setting_variables() -> set[str]:
    return {f"FARM_{field.name.upper()}" for field in dataclasses.fields(Settings)}


def yaml_documents() -> dict[Path, list]:
    found = {}
    for path in sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]):
        found[path] = [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
    return found


def kubernetes_objects() -> list[dict]:
    return [document for path, documents in yaml_documents().items() if "kubernetes" in path.parts
            for document in documents]


def farm_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `farm`) of every farm command in deploy/."""
    commands = []

    def add(where: str, argv):
        argv = [str(arg) for arg in argv]
        if argv and Path(argv[0]).name == "farm":
            commands.append((where, argv[1:]))

    for path in sorted(DEPLOY.glob("Dockerfile.*")):
        for match in re.finditer(r"^CMD (\[.*\])$", path.read_text(), re.M):
            add(path.name, json.loads(match.group(1)))
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        for match in re.finditer(r"^ExecStart=(.*)$", path.read_text(), re.M):
            add(path.name, [arg.replace("%i", "0") for arg in shlex.split(match.group(1))])
    for path, documents in yaml_documents().items():
        for document in documents:
            for node in _walk(document):
                if isinstance(node, dict) and isinstance(node.get("command"), list):
                    add(path.name, node["command"] + list(node.get("args") or []))
    return commands


def _walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_every_file_parses():
    documents = yaml_documents()
    assert len(documents) >= 7
    json.loads((DEPLOY / "grafana" / "comfy-farm.json").read_text())
    for name in ("Dockerfile.web", "Dockerfile.worker"):
        text = (DEPLOY / name).read_text()
        assert re.search(r"^FROM \S+", text, re.M) and re.search(r"^CMD \[", text, re.M)


def test_every_farm_command_parses_with_the_clis_own_parser():
    commands = farm_commands()
    assert {argv[0] for _, argv in commands} >= {"web", "worker", "db"}
    parser = build_parser()
    for where, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `farm {' '.join(argv)}` is not a command the CLI accepts")


def test_every_farm_variable_is_a_setting():
    known = setting_variables() | CLIENT_VARIABLES
    used = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix != ".json":
            used |= set(re.findall(r"\bFARM_[A-Z_]+\b", path.read_text()))
    unknown = sorted(used - known)
    assert not unknown, f"deploy/ uses variables no setting reads: {unknown}"
    # And the values given in the manifests load.
    config = next(o for o in kubernetes_objects() if o["kind"] == "ConfigMap")
    load_settings(env=config["data"])


def test_the_images_run_as_a_user_and_check_their_health():
    for name, path in (("Dockerfile.web", "/readyz"), ("Dockerfile.worker", "/healthz")):
        text = (DEPLOY / name).read_text()
        user = re.findall(r"^USER (\S+)", text, re.M)
        assert user and user[-1] not in ("root", "0"), name
        assert "HEALTHCHECK" in text and path in text, name
    assert "torch==${TORCH_VERSION}" in (DEPLOY / "Dockerfile.worker").read_text()
    assert "torch" not in (DEPLOY / "Dockerfile.web").read_text().lower().replace("no torch", "")


def test_the_kubernetes_manifests_probe_limit_and_drain():
    objects = kubernetes_objects()
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Deployment", "comfy-farm-web"), ("Service", "comfy-farm-web"),
            ("HorizontalPodAutoscaler", "comfy-farm-web"), ("StatefulSet", "comfy-farm-worker"),
            ("PodDisruptionBudget", "comfy-farm-worker"), ("Job", "comfy-farm-migrate"),
            ("ConfigMap", "comfy-farm"), ("Secret", "comfy-farm")} <= kinds
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    web = by_name[("Deployment", "comfy-farm-web")]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    worker_pod = by_name[("StatefulSet", "comfy-farm-worker")]["spec"]["template"]["spec"]
    worker = worker_pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["readinessProbe"] and worker["livenessProbe"]
    grace = float(by_name[("ConfigMap", "comfy-farm")]["data"]["FARM_STOP_GRACE_SECONDS"])
    assert worker_pod["terminationGracePeriodSeconds"] >= grace + 20  # the drain, then the requeue
    assert by_name[("Job", "comfy-farm-migrate")]["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "farm", "db", "upgrade"]
    hpa = by_name[("HorizontalPodAutoscaler", "comfy-farm-web")]["spec"]["scaleTargetRef"]
    assert (hpa["kind"], hpa["name"]) == ("Deployment", "comfy-farm-web")
    for pod in (web, worker):
        assert {"secretRef": {"name": "comfy-farm"}} in pod["envFrom"]
    secret = by_name[("Secret", "comfy-farm")]["stringData"]
    assert {"FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_SECRET_KEY"} <= set(secret)
    for obj in objects:
        security = (obj.get("spec", {}).get("template", {}).get("spec", {}) or {}).get("securityContext")
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            assert security and security["runAsNonRoot"] is True, obj["metadata"]["name"]


def test_compose_workers_get_gpus_and_time_to_drain():
    single = yaml.safe_load((DEPLOY / "compose" / "single-host.yml").read_text())
    worker = single["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["capabilities"] == ["gpu"] and devices["count"] == "all"
    assert worker["stop_grace_period"] == "60s"
    assert single["services"]["migrate"]["command"] == ["farm", "db", "upgrade"]
    cluster = yaml.safe_load((DEPLOY / "compose" / "cluster.yml").read_text())
    assert cluster["services"]["worker"]["deploy"]["placement"]["constraints"] == ["node.labels.gpu == true"]
    assert "proxy_set_header Upgrade" in cluster["configs"]["nginx"]["content"]  # WebSockets pass
