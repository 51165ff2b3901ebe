"""Kubernetes overlays: the offline Kubernetes schemas (kubernetes-validate) and the semantics of
the rendered objects: settings, references between objects, wiring, web, TF Serving and the
trainer; the operational rules are in :mod:`tests.deploy.checks.k8s_operations`, run from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from tests.deploy.checks.common import (
    INFRA_SECRET_KEYS,
    TFSERVING_GRPC_PORT,
    TFSERVING_REST_PORT,
    THIRD_PARTY_PORTS,
    WEB_PORT,
    as_list,
    command_flags,
    literal_secret,
)
from tests.deploy.checks.k8s_objects import (
    K8sIndex,
    container_environment,
    container_script,
    containers,
    image_name,
    is_postergenre_image,
    k8s_index,
    named_port,
    pod_labels,
    pod_spec,
)
from tests.deploy.checks.k8s_operations import (
    K8S_INFRA_SECRET_KEYS,
    K8S_ONLY_VARIABLES,
    K8S_STORES,
    check_k8s_gpu,
    check_k8s_hpa_replicas,
    check_k8s_ingress,
    check_k8s_migrations,
    check_k8s_network_policies,
    check_k8s_probes,
    check_k8s_redis,
    check_k8s_tfserving_readiness,
    check_k8s_worker_shutdown,
)
from tests.deploy.checks.settings import (
    postergenre_cli_problems,
    settings_for,
    settings_variables,
    tfserving_flag_problems,
    wired_url_problems,
)

KUBERNETES_VERSION = "1.37.0"


def check_k8s_schemas(docs: Iterable[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Each object against the Kubernetes schema of ``version``, strictly (no unknown fields).

    KEDA's and the Prometheus Operator's objects are not Kubernetes' own: :mod:`tests.deploy.keda` and
    :mod:`tests.deploy.monitors` check them against their CRDs."""
    import kubernetes_validate

    problems = []
    for doc in docs:
        if str(doc.get("apiVersion", "")).startswith(("keda.sh/", "monitoring.coreos.com/")):
            continue
        where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {str(exc).splitlines()[0]} at {'/'.join(map(str, exc.path))}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
            problems.append(f"{where}: no schema: {exc}")
    return problems


def _environment_reference_problems(container: dict[str, Any], index: K8sIndex, cwhere: str) -> list[str]:
    """Every ConfigMap and Secret the container's environment reads (whole or by key) is rendered."""
    problems = []
    for source in container.get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] not in index.config_maps:
            problems.append(f"{cwhere}: envFrom ConfigMap {source['configMapRef']['name']} is not rendered")
        if "secretRef" in source and source["secretRef"]["name"] not in index.secrets:
            problems.append(
                f"{cwhere}: envFrom Secret {source['secretRef']['name']} is not in secret.example.yaml")
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            cm = ref["configMapKeyRef"]
            if cm["key"] not in index.config_maps.get(cm["name"], {}):
                problems.append(
                    f"{cwhere}: {variable['name']} reads missing ConfigMap key {cm['name']}.{cm['key']}")
        elif "secretKeyRef" in ref:
            sk = ref["secretKeyRef"]
            if sk["key"] not in index.secrets.get(sk["name"], {}):
                problems.append(
                    f"{cwhere}: {variable['name']} reads {sk['name']}.{sk['key']}, "
                    f"which secret.example.yaml does not define"
                )
    return problems


def check_k8s_semantics(
    docs: list[dict[str, Any]], overlay: str, secrets: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """References between objects resolve, and the wiring agrees with the code."""
    index = k8s_index(docs, secrets)
    secrets, by_kind = index.secrets, index.by_kind
    config_maps, workloads = index.config_maps, index.workloads
    settings_names = settings_variables()
    problems: list[str] = []

    for config_map, data in config_maps.items():
        problems += [
            f"ConfigMap {config_map}: {key} is a secret; it belongs in the Secret postergenre-secrets"
            for key, value in data.items()
            if literal_secret(key, value) or key == "POSTERGENRE_DATABASE_URL"
        ]
    for doc in workloads:
        for container in containers(pod_spec(doc) or {}):
            problems += [
                f"{doc['kind']}/{doc['metadata']['name']}: {variable['name']} holds a literal secret"
                for variable in container.get("env", [])
                if literal_secret(variable["name"], str(variable.get("value", "")))
            ]
    for secret_name, keys in secrets.items():
        problems += [
            f"secret.example.yaml: {secret_name}.{key} is not a setting"
            for key in sorted(set(keys) - settings_names - INFRA_SECRET_KEYS - K8S_INFRA_SECRET_KEYS)
        ]

    stack: dict[str, str] = {}
    for doc in workloads:
        spec = pod_spec(doc) or {}
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        volumes = {volume["name"] for volume in spec.get("volumes", [])}
        volumes |= {claim["metadata"]["name"] for claim in doc["spec"].get("volumeClaimTemplates", [])}
        for container in containers(spec):
            cwhere = f"{where}/{container['name']}"
            image = str(container.get("image", ""))
            if ":" not in image or image.endswith(":latest"):
                problems.append(f"{cwhere}: image {image!r} is not pinned to a version")
            problems += _resources_problems(container, cwhere)
            problems += [
                f"{cwhere}: mounts undeclared volume {m['name']}"
                for m in container.get("volumeMounts", [])
                if m["name"] not in volumes
            ]
            problems += _environment_reference_problems(container, index, cwhere)
            environment = container_environment(container, index)
            if is_postergenre_image(image):
                problems += [
                    f"{cwhere}: environment variable {key} is not a setting of shared/config.py"
                    for key in sorted(set(environment) - settings_names - K8S_ONLY_VARIABLES.keys())
                ]
                if not spec.get("securityContext", {}).get("runAsNonRoot"):
                    problems.append(f"{where}: postergenre pods must run as non-root")
                if "command" not in container:
                    problems += postergenre_cli_problems(as_list(container.get("args")), cwhere)
                if environment:
                    stack = stack or environment
    if not stack:
        return problems + [f"{overlay}: no postergenre container with its settings"]

    problems += _k8s_references(by_kind, workloads)
    problems += _k8s_wiring(by_kind, stack, overlay)
    problems += _k8s_services_in_overlay(by_kind, overlay)
    problems += _k8s_web(by_kind)
    problems += _k8s_tfserving(by_kind, stack)
    problems += _k8s_trainer(by_kind, overlay)
    jobs = by_kind.get("Job", {})
    if as_list(
        jobs.get("migrate", {})
        .get("spec", {})
        .get("template", {})
        .get("spec", {})
        .get("containers", [{}])[0]
        .get("args")
    ) != ["db", "upgrade"]:
        problems.append("Job migrate should run `postergenre db upgrade`")
    if "create-bucket" not in jobs:
        problems.append("no Job create-bucket")
    if "recrawl" not in by_kind.get("CronJob", {}):
        problems.append("no CronJob recrawl")
    for kind, names in (
        ("HorizontalPodAutoscaler", ("web", "tfserving")),
        ("PodDisruptionBudget", ("web", "tfserving")),
    ):
        problems += [f"no {kind} for {name}" for name in names if name not in by_kind.get(kind, {})]
    return (
        problems
        + check_k8s_probes(docs, secrets)
        + check_k8s_worker_shutdown(docs, secrets)
        + check_k8s_ingress(docs)
        + check_k8s_network_policies(docs, overlay, secrets)
        + check_k8s_redis(docs, overlay, secrets)
        + check_k8s_migrations(docs, secrets)
        + check_k8s_hpa_replicas(docs)
        + check_k8s_gpu(docs, overlay)
        + check_k8s_tfserving_readiness(docs, secrets)
    )


def _resources_problems(container: dict[str, Any], where: str) -> list[str]:
    resources = container.get("resources", {})
    return [
        f"{where}: no resources.{part}.{what}"
        for part in ("requests", "limits")
        for what in ("cpu", "memory")
        if what not in resources.get(part, {})
    ]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _k8s_references(
    by_kind: dict[str, dict[str, dict[str, Any]]], workloads: list[dict[str, Any]]
) -> list[str]:
    problems = []
    for name, service in by_kind.get("Service", {}).items():
        selector = service["spec"].get("selector")
        if service["spec"].get("type") == "ExternalName" or not selector:
            continue
        matches = [w for w in workloads if _selects(selector, pod_labels(w))]
        if not matches:
            problems.append(f"Service/{name} selects no pods")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            if not any(
                named_port(c, target) for w in matches for c in (pod_spec(w) or {}).get("containers", [])
            ):
                problems.append(
                    f"Service/{name} port {port['port']} targets {target}, which no selected "
                    f"container exposes"
                )
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]
        if target["name"] not in by_kind.get(target["kind"], {}):
            problems.append(
                f"HorizontalPodAutoscaler/{name} scales missing {target['kind']}/{target['name']}"
            )
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if not any(_selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(w)) for w in workloads):
            problems.append(f"PodDisruptionBudget/{name} selects no pods")
    for name, ingress in by_kind.get("Ingress", {}).items():
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                routed = by_kind.get("Service", {}).get(backend["name"])
                ports = [p.get("name") for p in (routed or {}).get("spec", {}).get("ports", [])]
                ports += [p.get("port") for p in (routed or {}).get("spec", {}).get("ports", [])]
                wanted = backend["port"].get("name", backend["port"].get("number"))
                if routed is None or wanted not in ports:
                    problems.append(f"Ingress/{name} routes to missing Service {backend['name']}:{wanted}")
    return problems


def _service_ports(service: dict[str, Any]) -> set[int]:
    return {int(port["port"]) for port in service["spec"].get("ports", [])}


def _k8s_wiring(
    by_kind: dict[str, dict[str, dict[str, Any]]], stack: dict[str, str], overlay: str
) -> list[str]:
    problems = []
    services = by_kind.get("Service", {})
    listening = {name: _service_ports(service) for name, service in services.items()}
    problems += [f"{overlay}: {problem}" for problem in wired_url_problems(
        stack, listening, "the pods' environment ", "a Service")]
    for name, port in THIRD_PARTY_PORTS.items():
        if name in services and port not in _service_ports(services[name]):
            problems.append(f"{overlay}: Service {name} should offer port {port}")
    bucket_job = by_kind.get("Job", {}).get("create-bucket")
    if bucket_job and "POSTERGENRE_OBJECT_STORE" not in str(bucket_job):
        problems.append("Job create-bucket does not read POSTERGENRE_OBJECT_STORE")
    return problems


def _k8s_services_in_overlay(by_kind: dict[str, dict[str, dict[str, Any]]], overlay: str) -> list[str]:
    """dev: the stores are StatefulSets (the cache, without state, a Deployment); prod: they are
    external (no selector or ExternalName)."""
    problems = []
    for name in K8S_STORES:
        service = by_kind.get("Service", {}).get(name)
        if service is None:
            problems.append(f"{overlay}: no Service {name}")
            continue
        external = service["spec"].get("type") == "ExternalName" or not service["spec"].get("selector")
        kind = "Deployment" if name == "cache" else "StatefulSet"
        in_cluster = name in by_kind.get(kind, {})
        if overlay == "dev" and not (in_cluster and not external):
            problems.append(f"dev: {name} should be a {kind} behind its Service")
        if overlay == "prod" and (in_cluster or not external):
            problems.append(f"prod: {name} should be an external endpoint, not run in the cluster")
    return problems


def _k8s_web(by_kind: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    web = by_kind.get("Deployment", {}).get("web")
    if web is None:
        return ["no Deployment web"]
    container = web["spec"]["template"]["spec"]["containers"][0]
    problems = []
    args = as_list(container.get("args"))
    if "--port" not in args or int(args[args.index("--port") + 1]) != WEB_PORT:
        problems.append(f"web should serve on port {WEB_PORT}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container.get(probe, {}).get("httpGet", {})
        if http.get("path") != path or named_port(container, http.get("port")) != WEB_PORT:
            problems.append(f"web {probe} should GET {path} on port {WEB_PORT}")
    return problems


def _k8s_tfserving(by_kind: dict[str, dict[str, dict[str, Any]]], stack: dict[str, str]) -> list[str]:
    deployment = by_kind.get("Deployment", {}).get("tfserving")
    if deployment is None:
        return ["no Deployment tfserving"]
    settings = settings_for(stack)
    models_dir = str(PurePosixPath(settings.models_dir))
    spec = deployment["spec"]["template"]["spec"]
    problems = []
    volumes = set()
    for container in containers(spec):
        if "postergenre db check" in container_script(container):
            continue  # the schema wait touches no model
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if models_dir not in mounts:
            problems.append(f"tfserving/{container['name']} does not mount the models at {models_dir}")
        else:
            volumes.add(mounts[models_dir])
    if len(volumes) > 1:
        problems.append(f"tfserving containers mount different volumes at {models_dir}: {sorted(volumes)}")
    server = next((c for c in spec["containers"] if image_name(str(c["image"])) == "serving"), None)
    if server is None:
        return [*problems, "tfserving runs no tensorflow/serving container"]
    flags = command_flags(as_list(server.get("args")))
    problems += tfserving_flag_problems(flags, settings, "k8s tfserving")
    if {flags.get("port"), flags.get("rest_api_port")} != {
        str(TFSERVING_GRPC_PORT),
        str(TFSERVING_REST_PORT),
    }:
        problems.append("tfserving should listen on 8500 (gRPC) and 8501 (REST)")
    if not any("--once" in as_list(c.get("command")) for c in spec.get("initContainers", [])):
        problems.append("tfserving needs an init container writing models.config before it starts")
    return problems


def _k8s_trainer(by_kind: dict[str, dict[str, dict[str, Any]]], overlay: str) -> list[str]:
    trainer = by_kind.get("Deployment", {}).get("trainer")
    if trainer is None:
        return ["no Deployment trainer"]
    spec = trainer["spec"]["template"]["spec"]
    container = spec["containers"][0]
    problems = []
    if as_list(container.get("args"))[:3] != ["worker", "--queues", "gpu"]:
        problems.append("trainer should consume the `gpu` queue")
    # Its GPU (prod) and scheduling: check_k8s_gpu.
    for name in ("crawler", "dataset-worker"):
        deployment = by_kind.get("Deployment", {}).get(name)
        queue = {"crawler": "crawl", "dataset-worker": "dataset"}[name]
        if deployment is None or as_list(deployment["spec"]["template"]["spec"]["containers"][0].get("args"))[
            :3
        ] != ["worker", "--queues", queue]:
            problems.append(f"Deployment {name} should consume the `{queue}` queue")
    return problems
