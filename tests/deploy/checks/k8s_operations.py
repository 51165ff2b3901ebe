"""Kubernetes overlays, the operational rules: probes, worker shutdown, ingress, network policies,
stores (Redis), migrations before the workloads, scaling, GPUs and TF Serving's readiness.
"""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from tests.deploy.checks.common import (
    TFSERVING_REST_PORT,
    THIRD_PARTY_PORTS,
    WEB_PORT,
    as_list,
    command_flags,
    host_port,
)
from tests.deploy.checks.k8s_objects import (
    container_environment,
    container_script,
    containers,
    image_name,
    is_postergenre_image,
    k8s_index,
    named_port,
    pod_labels,
    pod_spec,
    worker_containers,
    workload_settings,
)
from tests.deploy.checks.settings import postergenre_cli_problems, settings_for

# Files the workers and the model-sync sidecar keep fresh (shared.config / docker/model_sync.py), and
# the probe that reads their age without starting Python or asking the broker.
WORKER_HEARTBEAT_FILE = "/tmp/postergenre-worker.heartbeat"
MODEL_SYNC_READY_FILE = "/tmp/postergenre-model-sync.ready"
MODEL_SYNC_HEARTBEAT_FILE = "/tmp/postergenre-model-sync.heartbeat"
HEARTBEAT_MAX_AGE_S = 120
MONITORING_CONFIG_NAME = "monitoring.config"
TFSERVING_METRICS_PATH = "/monitoring/prometheus/metrics"
# Celery's soft shutdown: the default of Settings.worker_soft_shutdown_s, and the margin the kubelet
# leaves after it (requeueing the task, closing connections) before SIGKILL.
DEFAULT_WORKER_SOFT_SHUTDOWN_S = 300.0
SOFT_SHUTDOWN_MARGIN_S = 60
# Variables a postergenre container may carry that are not settings, each with why.
K8S_ONLY_VARIABLES = {
    "REMAP_SIGTERM": "Celery reads it: SIGQUIT makes SIGTERM start the soft shutdown (workers)",
}
# Which wired settings each workload's pods connect with (from the code: web serves the API, sends
# tasks and caches predictions; the workers run tasks; tfserving's model sync reads the registry and
# copies models, its REST URL is loopback; the Jobs). Stores are servers only.
_DB, _S3 = "POSTERGENRE_DATABASE_URL", "POSTERGENRE_S3_ENDPOINT"
_BROKER = ("POSTERGENRE_BROKER_URL", "POSTERGENRE_RESULT_BACKEND")
K8S_CLIENTS: dict[str, tuple[str, ...]] = {
    "web": (
        _DB,
        _S3,
        *_BROKER,
        "POSTERGENRE_REDIS_URL",
        "POSTERGENRE_INFERENCE_URL",
        "POSTERGENRE_INFERENCE_REST_URL",
    ),
    "crawler": (_DB, _S3, *_BROKER),
    "dataset-worker": (_DB, _S3, *_BROKER),
    "trainer": (_DB, _S3, *_BROKER),
    "tfserving": (_DB, _S3),
    "migrate": (_DB,),
    "create-bucket": (_S3,),
    "recrawl": (_DB, _S3),
}
K8S_STORES = {**THIRD_PARTY_PORTS, "cache": 6379}
# Keys of the Secret example read by the stores of the dev overlay, not by postergenre.
K8S_INFRA_SECRET_KEYS = {"REDIS_PASSWORD"}
# Sources outside the namespace, by namespace name (label kubernetes.io/metadata.name): the ingress
# controller reaches web, Prometheus the metrics ports. Anything else from outside is denied.
INGRESS_CONTROLLER_NAMESPACE = "ingress-nginx"
PROMETHEUS_NAMESPACE = "monitoring"
WORKER_METRICS_PORT = 9808  # POSTERGENRE_WORKER_METRICS_PORT in compose.yaml and k8s/base/workers.yaml
K8S_OUTSIDE_SOURCES: dict[tuple[str, int], set[str]] = {
    ("web", WEB_PORT): {INGRESS_CONTROLLER_NAMESPACE, PROMETHEUS_NAMESPACE},
    ("tfserving", TFSERVING_REST_PORT): {PROMETHEUS_NAMESPACE},
    **{(worker, WORKER_METRICS_PORT): {PROMETHEUS_NAMESPACE}
       for worker in ("crawler", "dataset-worker", "trainer")},
}
# ingress-nginx (strict path validation, the default since v1.12) accepts only these characters in
# Exact and Prefix paths; others must be ImplementationSpecific (a plain nginx prefix location).
NGINX_STRICT_PATH = re.compile(r"^/[A-Za-z0-9/_-]*$")
# Always private, whatever the routers say.
PRIVATE_WEB_PATHS = ("/metrics", "/admin", "/api/v1/admin", "/api/v1/admin/jobs", "/healthz", "/readyz")


def heartbeat_probe(path: str) -> list[str]:
    """The exec probe that passes while ``path`` was touched in the last HEARTBEAT_MAX_AGE_S."""
    return ["sh", "-c", f"test $(( $(date +%s) - $(stat -c %Y {path}) )) -lt {HEARTBEAT_MAX_AGE_S}"]


def _writable_mount_for(container: dict[str, Any], path: str) -> bool:
    return any(
        PurePosixPath(path).is_relative_to(str(mount["mountPath"])) and not mount.get("readOnly")
        for mount in container.get("volumeMounts", [])
    )


def _probe_command(container: dict[str, Any], probe: str) -> list[str] | None:
    command = container.get(probe, {}).get("exec", {}).get("command")
    return None if command is None else [str(part) for part in command]


def check_k8s_probes(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """No probe starts Celery or Python; each worker's liveness is the age of its heartbeat file."""
    index = k8s_index(docs, secrets)
    problems = []
    for doc in index.workloads:
        for container in containers(pod_spec(doc) or {}):
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = _probe_command(container, probe)
                if command and re.search(r"\b(celery|python[0-9.]*)\b", " ".join(command)):
                    problems.append(
                        f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}: {probe} runs "
                        f"{shlex.join(command)!r}: a probe must not start Python or ask the broker"
                    )
    for doc, container in worker_containers(index):
        where = f"Deployment/{doc['metadata']['name']}/{container['name']}"
        settings = workload_settings(container, index)
        heartbeat = str(getattr(settings, "worker_heartbeat_file", WORKER_HEARTBEAT_FILE))
        if _probe_command(container, "livenessProbe") != heartbeat_probe(heartbeat):
            problems.append(f"{where}: livenessProbe should be exec {heartbeat_probe(heartbeat)}")
        if not _writable_mount_for(container, heartbeat):
            problems.append(f"{where}: no writable volume holds the heartbeat file {heartbeat}")
    return problems


def check_k8s_worker_shutdown(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """SIGTERM starts Celery's soft shutdown, and the kubelet waits for it (plus a margin)."""
    index = k8s_index(docs, secrets)
    problems = []
    for doc, container in worker_containers(index):
        where = f"Deployment/{doc['metadata']['name']}"
        environment = container_environment(container, index)
        if environment.get("REMAP_SIGTERM") != "SIGQUIT":
            problems.append(f"{where}: the worker needs env REMAP_SIGTERM=SIGQUIT (soft shutdown on SIGTERM)")
        settings = settings_for(environment)
        soft = float(
            getattr(
                settings,
                "worker_soft_shutdown_s",
                environment.get("POSTERGENRE_WORKER_SOFT_SHUTDOWN_S", DEFAULT_WORKER_SOFT_SHUTDOWN_S),
            )
        )
        grace = int(doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30))
        if grace < soft + SOFT_SHUTDOWN_MARGIN_S:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {grace} < worker_soft_shutdown_s {soft:g} "
                f"+ {SOFT_SHUTDOWN_MARGIN_S}"
            )
    return problems


def ingress_path_matches(path_type: str, path: str, request: str) -> bool:
    """Whether an Ingress path routes ``request``: Kubernetes' Exact and Prefix (element-wise by
    ``/``), and ingress-nginx's ImplementationSpecific without regex (a plain string prefix)."""
    if path_type == "Exact":
        return request == path
    if path_type == "Prefix":
        elements = [part for part in path.split("/") if part]
        return [part for part in request.split("/") if part][: len(elements)] == elements
    return request.startswith(path)


def web_paths() -> tuple[list[str], list[str]]:
    """(public, private) sample request paths of the web app, from its routers."""
    from services.web.routes import admin, explanations, health, models, predictions

    def samples(router: Any) -> list[str]:
        return [re.sub(r"\{[^}]*\}", "x", str(getattr(route, "path", ""))) for route in router.routes]

    public = [*samples(predictions.router), *samples(explanations.router), *samples(models.router), "/",
              "/static/app.js", "/openapi.json"]
    private = [*samples(admin.router), *samples(health.router), *PRIVATE_WEB_PATHS]
    return public, private


def check_k8s_ingress(docs: list[dict[str, Any]]) -> list[str]:
    """The Ingresses route the page and the public API, never the admin API, /admin or /metrics."""
    public, private = web_paths()
    rules = []
    problems = []
    for doc in docs:
        if doc["kind"] != "Ingress":
            continue
        for rule in doc["spec"].get("rules", []):
            for entry in rule.get("http", {}).get("paths", []):
                path_type, path = str(entry.get("pathType")), str(entry.get("path", "/"))
                rules.append((f"Ingress/{doc['metadata']['name']} {path_type} {path}", path_type, path))
                if path_type in ("Exact", "Prefix") and not NGINX_STRICT_PATH.match(path):
                    problems.append(
                        f"Ingress/{doc['metadata']['name']}: ingress-nginx refuses {path_type} path {path!r} "
                        f"(only letters, digits, /, _ and -); use ImplementationSpecific"
                    )
    for request in private:
        problems += [
            f"{where} routes the private path {request}"
            for where, t, p in rules
            if ingress_path_matches(t, p, request)
        ]
    problems += [
        f"no Ingress rule routes the public path {request}"
        for request in public
        if not any(ingress_path_matches(t, p, request) for _, t, p in rules)
    ]
    return problems


def _selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (an empty one selects everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and labels.get(key) in values)
            or (operator == "Exists" and key not in labels)
            or (operator == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def _policy_port_matches(ports: list[dict[str, Any]] | None, port: int, pod: dict[str, Any]) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        number = (
            wanted
            if isinstance(wanted, int)
            else next(
                (named_port(c, wanted) for c in containers(pod_spec(pod) or {}) if named_port(c, wanted)),
                None,
            )
        )
        if number is not None and number <= port <= int(entry.get("endPort", number)):
            return True
    return False


def _peer_matches(
    peer: dict[str, Any], namespace: str, source_labels: dict[str, str] | None, own: str
) -> bool:
    """Whether a NetworkPolicy peer admits a pod (labels) of ``namespace``; labels None: any pod there."""
    if "ipBlock" in peer:
        return source_labels is None  # addresses outside the cluster's pods
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not _selector_matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif namespace != own:
        return False
    return (
        "podSelector" not in peer
        or source_labels is None
        or _selector_matches(peer["podSelector"], source_labels)
    )


def _ingress_allowed(
    policies: list[dict[str, Any]],
    pod: dict[str, Any],
    port: int,
    namespace: str,
    source_labels: dict[str, str] | None,
    own: str,
) -> bool:
    selecting = [p for p in policies if _selector_matches(p["spec"].get("podSelector"), pod_labels(pod))]
    selecting = [p for p in selecting if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    return any(
        _policy_port_matches(rule.get("ports"), port, pod)
        and (
            not rule.get("from")
            or any(_peer_matches(peer, namespace, source_labels, own) for peer in rule["from"])
        )
        for policy in selecting
        for rule in policy["spec"].get("ingress") or []
    )


def check_k8s_network_policies(
    docs: list[dict[str, Any]], overlay: str, secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """A default deny selects every pod, and the policies allow exactly the connections of the wiring:
    each client workload to the Service port its settings name, plus the declared outside sources."""
    index = k8s_index(docs, secrets)
    policies = list(index.by_kind.get("NetworkPolicy", {}).values())
    services = index.by_kind.get("Service", {})
    namespaces = {str(d["metadata"].get("namespace", "")) for d in index.workloads}
    own = namespaces.pop() if len(namespaces) == 1 else ""
    problems = []
    if not any(
        p["spec"].get("podSelector") in ({}, None)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and not p["spec"].get("ingress")
        for p in policies
    ):
        problems.append(f"{overlay}: no default-deny NetworkPolicy (podSelector {{}}, Ingress, no rules)")
    names = {doc["metadata"]["name"]: doc for doc in index.workloads}
    stores = set(K8S_STORES)
    problems += [
        f"{overlay}: {doc['kind']}/{name} is not in checks.K8S_CLIENTS (which stores does it use?)"
        for name, doc in names.items()
        if name not in K8S_CLIENTS and name not in stores
    ]
    expected: set[tuple[str, str, int]] = set()
    for client, keys in K8S_CLIENTS.items():
        if client not in names:
            continue
        environment: dict[str, str] = {}
        for container in containers(pod_spec(names[client]) or {}):
            environment.update(container_environment(container, index))
        for key in keys:
            if key not in environment:
                continue
            host, port = host_port(environment[key])
            service = services.get(host)
            if (
                service is None
                or service["spec"].get("type") == "ExternalName"
                or not service["spec"].get("selector")
            ):
                continue  # outside the cluster (or reported by the wiring check)
            for entry in service["spec"].get("ports", []):
                if int(entry["port"]) != port:
                    continue
                for server_name, server in names.items():
                    if not _selector_matches(
                        {"matchLabels": service["spec"]["selector"]}, pod_labels(server)
                    ):
                        continue
                    target = entry.get("targetPort", entry["port"])
                    for container in (pod_spec(server) or {}).get("containers", []):
                        number = named_port(container, target)
                        if number:
                            expected.add((client, server_name, number))
    for server_name, server in names.items():
        ports = {
            int(p["containerPort"])
            for c in (pod_spec(server) or {}).get("containers", [])
            for p in c.get("ports", [])
        }
        for port in sorted(ports):
            for client_name, source in names.items():
                if client_name == server_name:
                    continue
                allowed = _ingress_allowed(policies, server, port, own, pod_labels(source), own)
                wanted = (client_name, server_name, port) in expected
                if wanted and not allowed:
                    problems.append(
                        f"{overlay}: no NetworkPolicy lets {client_name} reach {server_name}:{port}"
                    )
                elif allowed and not wanted:
                    problems.append(
                        f"{overlay}: the NetworkPolicies let {client_name} reach {server_name}:{port}, "
                        f"which its settings do not use"
                    )
            wanted_outside = K8S_OUTSIDE_SOURCES.get((server_name, port), set())
            for namespace in sorted({INGRESS_CONTROLLER_NAMESPACE, PROMETHEUS_NAMESPACE, "elsewhere"}):
                allowed = _ingress_allowed(policies, server, port, namespace, None, own)
                if namespace in wanted_outside and not allowed:
                    problems.append(
                        f"{overlay}: no NetworkPolicy lets namespace {namespace} reach {server_name}:{port}"
                    )
                elif allowed and namespace not in wanted_outside:
                    problems.append(
                        f"{overlay}: the NetworkPolicies let namespace {namespace} reach {server_name}:{port}"
                    )
    return problems


def redis_flags(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a redis-server command line."""
    flags = {}
    for position, argument in enumerate(argv):
        if argument.startswith("--"):
            following = argv[position + 1] if position + 1 < len(argv) else ""
            flags[argument[2:]] = "" if following.startswith("--") else following
    return flags


def check_k8s_redis(
    docs: list[dict[str, Any]], overlay: str, secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """The prediction cache is its own Redis (LRU, no persistence), the broker never evicts and keeps
    its append-only file, and every Redis URL carries a password from the Secret."""
    index = k8s_index(docs, secrets)
    environment: dict[str, str] = {}
    for doc in index.workloads:
        for container in containers(pod_spec(doc) or {}):
            if is_postergenre_image(str(container.get("image", ""))):
                environment = environment or container_environment(container, index)
    problems = []
    keys = ("POSTERGENRE_BROKER_URL", "POSTERGENRE_RESULT_BACKEND", "POSTERGENRE_REDIS_URL")
    for key in keys:
        url = environment.get(key, "")
        if not urlsplit(url).password:
            problems.append(f"{overlay}: {key} ({url!r}) carries no password")
    broker, cache = host_port(environment.get(keys[0], ""))[0], host_port(environment.get(keys[2], ""))[0]
    if broker == cache:
        problems.append(
            f"{overlay}: POSTERGENRE_REDIS_URL (the prediction cache) uses the broker's Redis {broker!r}; "
            f"an evicting cache and a broker that must never lose a task need two servers"
        )
    services = index.by_kind.get("Service", {})
    for host, role in ((broker, "broker"), (cache, "cache")):
        service = services.get(host)
        if service is None or not service["spec"].get("selector"):
            continue  # external (prod): its configuration is the provider's
        for doc in index.workloads:
            if not _selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(doc)):
                continue
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            server = (pod_spec(doc) or {}).get("containers", [{}])[0]
            flags = redis_flags(as_list(server.get("command")) + as_list(server.get("args")))
            persistent = flags.get("appendonly") == "yes" or bool(doc["spec"].get("volumeClaimTemplates"))
            if role == "broker" and (flags.get("maxmemory-policy") != "noeviction" or not persistent):
                problems.append(
                    f"{where}: the broker Redis needs --maxmemory-policy noeviction and --appendonly yes"
                )
            if role == "cache" and (
                flags.get("maxmemory-policy") != "allkeys-lru"
                or not flags.get("maxmemory")
                or persistent
                or flags.get("save") != ""
            ):
                problems.append(
                    f"{where}: the cache Redis needs --maxmemory, --maxmemory-policy allkeys-lru, "
                    f'--save "" and no append-only file or volume'
                )
            password = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", flags.get("requirepass", ""))
            secret_variables = {
                v["name"] for v in server.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})
            }
            if password is None or password.group(1) not in secret_variables:
                problems.append(f"{where}: --requirepass should be $(VAR) of a variable read from a Secret")
    return problems


def check_k8s_migrations(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """The Deployments that use the database start after the schema is at head (an init container
    waits with ``postergenre db check``); only the Job migrate runs ``db upgrade``."""
    index = k8s_index(docs, secrets)
    problems = postergenre_cli_problems(["db", "check"], "the schema wait")
    for doc in index.workloads:
        spec = pod_spec(doc) or {}
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for container in containers(spec):
            if "db upgrade" in container_script(container) and where != "Job/migrate":
                problems.append(f"{where}/{container['name']} upgrades the schema; only Job/migrate may")
        if doc["kind"] != "Deployment" or _DB not in K8S_CLIENTS.get(doc["metadata"]["name"], ()):
            continue
        first = (spec.get("initContainers") or [{}])[0]
        script = container_script(first)
        if "postergenre db check" not in script or not re.search(r"\b(until|while)\b", script):
            problems.append(
                f"{where}: its first init container should wait in a loop until `postergenre db check` passes"
            )
        elif not is_postergenre_image(str(first.get("image", ""))):
            problems.append(
                f"{where}: the schema wait runs in {first.get('image')!r}, not a postergenre image"
            )
    return problems


def check_k8s_hpa_replicas(docs: list[dict[str, Any]]) -> list[str]:
    """A Deployment scaled by an HPA (or a KEDA ScaledObject, which makes one) has no spec.replicas
    (each apply would reset the autoscaler's count)."""
    index = k8s_index(docs, {})
    problems = []
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, scaler in index.by_kind.get(kind, {}).items():
            target = scaler["spec"]["scaleTargetRef"]
            target_kind = target.get("kind", "Deployment")
            scaled = index.by_kind.get(target_kind, {}).get(target["name"])
            if scaled is not None and "replicas" in scaled["spec"]:
                problems.append(f"{target_kind}/{target['name']} sets spec.replicas; {kind}/{name} owns it")
    return problems


def _gpu_problems(spec: dict[str, Any], container: dict[str, Any], where: str) -> list[str]:
    resources = container.get("resources", {})
    problems = []
    if str(resources.get("limits", {}).get("nvidia.com/gpu")) != "1":
        problems.append(f"{where} should have the limit nvidia.com/gpu: 1")
    request = resources.get("requests", {}).get("nvidia.com/gpu")
    if request is not None and str(request) != "1":
        problems.append(f"{where}: its nvidia.com/gpu request must equal the limit")
    if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
        problems.append(f"{where} needs the toleration of the nvidia.com/gpu taint")
    return problems


def _node_label_problems(spec: dict[str, Any], where: str) -> list[str]:
    labels = list((spec.get("nodeSelector") or {}).keys())
    for term in (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    ):
        labels += [e.get("key", "") for e in term.get("matchExpressions", [])]
    return [
        f"{where} selects nodes by the label {label} (GPU Feature Discovery); "
        f"its nvidia.com/gpu request is what schedules it"
        for label in labels
        if label.startswith(("nvidia.com/", "feature.node.kubernetes.io/"))
    ]


def check_k8s_gpu(docs: list[dict[str, Any]], overlay: str) -> list[str]:
    """GPU pods are scheduled by their nvidia.com/gpu resource, not node labels: in prod the trainer
    and TF Serving (image -gpu) take one GPU each; dev runs both on CPU."""
    index = k8s_index(docs, {})
    problems = []
    for name in ("trainer", "tfserving"):
        deployment = index.by_kind.get("Deployment", {}).get(name)
        if deployment is None:
            continue
        spec = deployment["spec"]["template"]["spec"]
        container = next(
            (c for c in spec["containers"] if name == "trainer" or image_name(str(c["image"])) == "serving"),
            spec["containers"][0],
        )
        where = f"{overlay} {name}"
        problems += _node_label_problems(spec, where)
        gpu = "nvidia.com/gpu" in str(container.get("resources", {}))
        if overlay == "prod":
            problems += _gpu_problems(spec, container, where)
            if name == "tfserving" and not str(container["image"]).endswith("-gpu"):
                problems.append(
                    f"prod tfserving should run the GPU build (tensorflow/serving:X-gpu), "
                    f"not {container['image']}"
                )
        elif gpu or str(container["image"]).endswith("-gpu"):
            problems.append(f"{where} should run on CPU (no nvidia.com/gpu, no -gpu image)")
    return problems


def check_k8s_tfserving_readiness(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """A TF Serving pod is ready once the model sync beside it saw every registered model AVAILABLE;
    the sync's liveness is its heartbeat; TF Serving exports Prometheus metrics; batching comes from
    the file the sync writes from the settings, not from the manifests."""
    index = k8s_index(docs, secrets)
    deployment = index.by_kind.get("Deployment", {}).get("tfserving")
    if deployment is None:
        return ["no Deployment tfserving"]
    template = deployment["spec"]["template"]
    spec = template["spec"]
    problems = []
    syncs = [c for c in spec["containers"] if as_list(c.get("command"))[:1] == ["postergenre-model-sync"]]
    if len(syncs) != 1 or as_list(syncs[0].get("command")) != ["postergenre-model-sync", "--interval", "30"]:
        return ["tfserving needs one model-sync sidecar running `postergenre-model-sync --interval 30`"]
    sync = syncs[0]
    if _probe_command(sync, "readinessProbe") != ["cat", MODEL_SYNC_READY_FILE]:
        problems.append(
            f"tfserving/{sync['name']}: readinessProbe should be exec cat {MODEL_SYNC_READY_FILE}"
        )
    if _probe_command(sync, "livenessProbe") != heartbeat_probe(MODEL_SYNC_HEARTBEAT_FILE):
        problems.append(
            f"tfserving/{sync['name']}: livenessProbe should be exec "
            f"{heartbeat_probe(MODEL_SYNC_HEARTBEAT_FILE)}"
        )
    for path in (MODEL_SYNC_READY_FILE, MODEL_SYNC_HEARTBEAT_FILE):
        if not _writable_mount_for(sync, path):
            problems.append(f"tfserving/{sync['name']}: no writable volume holds {path}")
    loopback = f"http://127.0.0.1:{TFSERVING_REST_PORT}"
    rest = container_environment(sync, index).get("POSTERGENRE_INFERENCE_REST_URL")
    if rest != loopback:
        problems.append(
            f"tfserving/{sync['name']}: POSTERGENRE_INFERENCE_REST_URL is {rest!r}, should be {loopback}"
        )
    server: dict[str, Any] = next(
        (c for c in spec["containers"] if image_name(str(c["image"])) == "serving"), {}
    )
    settings = workload_settings(sync, index)
    monitoring = str(PurePosixPath(settings.models_dir) / MONITORING_CONFIG_NAME)
    flags = command_flags(as_list(server.get("args")))
    if flags.get("monitoring_config_file") != monitoring:
        problems.append(
            f"tfserving: --monitoring_config_file is {flags.get('monitoring_config_file')!r}, "
            f"the sync writes {monitoring!r}"
        )
    if "num_batch_threads" in str(deployment) or "num_batch_threads" in str(index.config_maps):
        problems.append(
            "tfserving: num_batch_threads is hard-coded; "
            "the sync writes it from POSTERGENRE_INFERENCE_BATCH_THREADS"
        )
    annotations = template["metadata"].get("annotations", {})
    wanted = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(TFSERVING_REST_PORT),
        "prometheus.io/path": TFSERVING_METRICS_PATH,
    }
    problems += [
        f"tfserving pods: annotation {key} is {annotations.get(key)!r}, should be {value!r}"
        for key, value in wanted.items()
        if annotations.get(key) != value
    ]
    return problems
