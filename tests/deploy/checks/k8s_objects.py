"""Reading the Kubernetes manifests: kustomize overlays rendered with kubectl, the pods, containers,
ports and environment of the rendered objects, and the Secret example, for the checks in
:mod:`tests.deploy.checks.k8s` and :mod:`tests.deploy.checks.k8s_operations` (and KEDA's).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.checks.common import REPO, as_list, load_yaml, run_tool, tool
from tests.deploy.checks.settings import settings_for

K8S_DIR = REPO / "k8s"
OVERLAYS = ("dev", "prod")
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"


class RenderError(RuntimeError):
    """kustomize refused an overlay."""


def render_overlay(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` (kubectl's built-in kustomize, offline) as a list of objects."""
    result = run_tool([tool("kubectl"), "kustomize", str(directory)])
    if result.returncode != 0:
        raise RenderError(f"kustomize failed on {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in WORKLOAD_KINDS:
        return dict(doc["spec"]["template"]["spec"])
    if doc.get("kind") == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return None


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    if doc.get("kind") == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {}))
    return dict(doc["spec"]["template"]["metadata"].get("labels", {}))


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def image_name(image: str) -> str:
    """The repository part of an image reference, without registry path or tag."""
    return image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]


def is_postergenre_image(image: str) -> bool:
    return image_name(image).startswith("postergenre-") or "/postergenre/" in image


def named_port(container: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for entry in container.get("ports", []):
        if entry.get("name") == port:
            return int(entry["containerPort"])
    return None


def read_secret_example(path: Path = SECRET_EXAMPLE) -> dict[str, dict[str, str]]:
    """Secret name -> its keys and example values, from the committed example (never applied)."""
    secrets = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "Secret":
            secrets[doc["metadata"]["name"]] = {
                str(k): str(v) for k, v in (doc.get("stringData") or {}).items()
            }
    return secrets


@dataclass
class K8sIndex:
    by_kind: dict[str, dict[str, dict[str, Any]]]
    config_maps: dict[str, dict[str, str]]
    workloads: list[dict[str, Any]]
    secrets: dict[str, dict[str, str]]


def k8s_index(docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None) -> K8sIndex:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config_maps = {
        name: {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
        for name, doc in by_kind.get("ConfigMap", {}).items()
    }
    return K8sIndex(
        by_kind,
        config_maps,
        [doc for doc in docs if pod_spec(doc) is not None],
        read_secret_example() if secrets is None else secrets,
    )


def container_environment(container: dict[str, Any], index: K8sIndex) -> dict[str, str]:
    """The variables a container gets (envFrom, then env; $(VAR) references expanded)."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(index.config_maps.get(source["configMapRef"]["name"], {}))
        if "secretRef" in source:
            environment.update(index.secrets.get(source["secretRef"]["name"], {}))
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            value = index.config_maps.get(ref["configMapKeyRef"]["name"], {}).get(
                ref["configMapKeyRef"]["key"], ""
            )
        elif "secretKeyRef" in ref:
            value = index.secrets.get(ref["secretKeyRef"]["name"], {}).get(ref["secretKeyRef"]["key"], "")
        else:
            value = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: environment.get(m.group(1), m.group(0)),
                str(variable.get("value", "")),
            )
        environment[variable["name"]] = value
    return environment


def workload_settings(container: dict[str, Any], index: K8sIndex) -> Any:
    return settings_for(container_environment(container, index))


def worker_containers(index: K8sIndex) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, container) of every Celery worker (``postergenre worker ...``)."""
    for doc in index.by_kind.get("Deployment", {}).values():
        for container in doc["spec"]["template"]["spec"].get("containers", []):
            if is_postergenre_image(str(container.get("image", ""))) and as_list(container.get("args"))[
                :1
            ] == ["worker"]:
                yield doc, container


def container_script(container: dict[str, Any]) -> str:
    return " ".join(as_list(container.get("command")) + as_list(container.get("args")))


def kustomization_resources(root: Path = K8S_DIR) -> dict[Path, list[Path]]:
    """Each kustomization.yaml and the files or folders it lists."""
    listed = {}
    for path in root.rglob("kustomization.yaml"):
        document = load_yaml(path) or {}
        listed[path] = [(path.parent / entry).resolve() for entry in document.get("resources", [])]
    return listed
