"""deploy/k8s/: every manifest validates offline against the Kubernetes schemas (pinned
version), and every XMTF_* variable a container gets exists where it is read: the scorer's
settings for the scorer, ``xmtf-train``'s options for the trainers (SPEC §11, §14)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S_VERSION = "1.31.0"  # the oldest Kubernetes the manifests target
DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))


def documents() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def scorer_variables() -> set[str]:
    from scorer.settings import ScorerSettings

    return {f"XMTF_{name.upper()}" for name in ScorerSettings.model_fields}


def trainer_variables(command: str) -> set[str]:
    from trainer.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    return {
        "XMTF_" + opt[2:].upper().replace("-", "_")
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--")
    }


def test_manifests_exist() -> None:
    kinds = {d["kind"] for _, d in documents()}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    assert {"CronJob", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for _, doc in documents():
        if doc["kind"] == "Deployment":
            out.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            job = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            out.append((doc["metadata"]["name"], job))
    return out


def container_variables(container: dict[str, Any]) -> set[str]:
    sources = {
        (d["kind"], d["metadata"]["name"]): d
        for _, d in documents()
        if d["kind"] in ("ConfigMap", "Secret")
    }
    names = {e["name"] for e in container.get("env", [])}
    for ref in container.get("envFrom", []):
        kind, name = (
            ("ConfigMap", ref["configMapRef"]["name"])
            if "configMapRef" in ref
            else (
                "Secret",
                ref["secretRef"]["name"],
            )
        )
        src = sources[(kind, name)]
        names |= set(src.get("data", {})) | set(src.get("stringData", {}))
    return {n for n in names if n.startswith("XMTF_")}


def test_every_xmtf_variable_is_read() -> None:
    scorer_vars, consume_vars = scorer_variables(), trainer_variables("consume")
    checked = 0
    for name, spec in pod_specs():
        for container in spec["containers"]:
            used = container_variables(container)
            if container["image"].startswith("xmtf-scorer"):
                unknown = used - scorer_vars
            else:
                assert container["args"][0] == "consume", name
                unknown = used - consume_vars
                # a trainer's arguments are options of the command too
                opts = {a for a in container["args"] if a.startswith("--")}
                assert {"XMTF_" + o[2:].upper().replace("-", "_") for o in opts} <= consume_vars
            assert not unknown, f"{name}: {sorted(unknown)} are read by nothing"
            checked += len(used)
    assert checked >= 15


def test_scorer_pods_follow_the_contract() -> None:
    (_, spec), *_ = [(n, s) for n, s in pod_specs() if n == "xmtf-scorer"]
    c = spec["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert any(m["mountPath"] == "/models" and m["readOnly"] for m in c["volumeMounts"])
    config = {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == "ConfigMap"}
    assert config["xmtf-scorer"]["data"]["XMTF_WORKERS"] == c["resources"]["requests"]["cpu"]
    for name, pod in pod_specs():  # SPEC §13: deployments publish as a canary
        for container in pod["containers"]:
            if "consume" in container.get("args", []):
                assert "--publish" in container["args"], name
                assert container["args"][container["args"].index("--publish") + 1].startswith(
                    "canary:"
                )
