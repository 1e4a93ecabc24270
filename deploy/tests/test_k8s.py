"""The Kubernetes manifests, checked without a cluster.

Each overlay is rendered (real kustomize when available, else the Python builder in
kustomize.py) and the rendered objects are checked for what an operator relies on: probes,
resources, hardening, autoscaling, disruption budgets, network isolation, secrets by reference.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common import kafka_access, redis_access
from common.kafka import topic_specs
from deploy.tests import kustomize
from deploy.tests.netpol import Pod, allowed, pods_from_template, selector_matches

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["dev", "prod"]
NAMESPACE = {"dev": "scoreboard-dev", "prod": "scoreboard"}
# The cross-service agreement on ports.
SERVICES = {"gateway": 8080, "auth": 8081, "score": 8082, "broadcaster": 8083}
OVERLAY_TAG = {"dev": "dev", "prod": "0.1.0"}
EXPECTED_IMAGE = {
    "dev": "scoreboard:dev",
    "prod": "registry.example.com/scoreboard/scoreboard:0.1.0",
}
# Settings whose values are credentials: they may only come from a Secret.
SECRET_SETTINGS = re.compile(r"DSN|PASSWORD|PASSPHRASE|SECRET|HMAC|TOKEN|REDIS_URL|_KEY")
CREDENTIAL_KEYS = re.compile(r"(?i)password|dsn|passphrase|secret|keys")


@functools.cache
def _render(target: str) -> tuple[Manifest, ...]:
    directory = K8S / "base" if target == "base" else K8S / "overlays" / target
    command = kustomize.kustomize_command()
    if command is None:
        return tuple(kustomize.build_fallback(directory).objects)
    return tuple(kustomize.build_with_tool(command, directory))


def rendered(target: str) -> list[Manifest]:
    """The overlay's objects (a fresh copy each time: tests may not mutate the cache)."""
    return copy.deepcopy(list(_render(target)))


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of that kind and name."""
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def find_generated(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """A generated ConfigMap/Secret, whose rendered name may carry kustomize's hash suffix."""
    pattern = re.compile(rf"^{re.escape(name)}(-[a-z0-9]{{10}})?$")
    hits = [o for o in objects if o["kind"] == kind and pattern.match(o["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def pod_spec(workload: Manifest) -> Manifest:
    """The pod template's spec."""
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def main_container(deployment: Manifest) -> Manifest:
    """The service container (named like the Deployment)."""
    name = deployment["metadata"]["name"]
    containers: list[Manifest] = [
        c for c in pod_spec(deployment)["containers"] if c["name"] == name
    ]
    assert len(containers) == 1
    return containers[0]


def workloads(objects: list[Manifest]) -> Iterator[Manifest]:
    """Everything with a pod template."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield obj


def cpu(quantity: str | int | float) -> float:
    """CPU quantity in cores."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory(quantity: str | int) -> float:
    """Memory quantity in bytes."""
    text = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def setting_names(service: str) -> set[str]:
    """The SCOREBOARD_* variables a service's Settings class reads."""
    settings = importlib.import_module(f"{service}.settings").Settings
    return {f"SCOREBOARD_{name.upper()}" for name in settings.model_fields}


def console_scripts() -> set[str]:
    """Every [project.scripts] entry of the workspace's members."""
    names: set[str] = set()
    for pyproject in [*REPO.glob("libs/*/pyproject.toml"), *REPO.glob("services/*/pyproject.toml")]:
        names |= set(tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {}))
    return names


# --- the files themselves ------------------------------------------------------------------


def test_every_manifest_file_parses_and_is_used() -> None:
    """Each YAML file parses, and each is part of a kustomization (no forgotten files)."""
    referenced: set[Path] = set()
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    assert kustomizations
    for kfile in kustomizations:
        spec = yaml.safe_load(kfile.read_text())
        assert spec["kind"] in ("Kustomization", "Component"), kfile
        for entry in [*spec.get("resources", []), *spec.get("components", [])]:
            referenced.add((kfile.parent / entry).resolve())
        for patch in spec.get("patches", []):
            referenced.add((kfile.parent / patch["path"]).resolve())
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs = kustomize.load_documents(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: {doc}"
            assert doc["metadata"].get("name"), path
        if not path.name.endswith(".example.yaml"):
            assert path.resolve() in referenced, f"{path} is in no kustomization"


def test_strimzi_kafka_users_grant_exactly_the_acl_matrix() -> None:
    """The prod example's KafkaUsers carry common.kafka_access's grants, no more, no less."""
    kinds = {"topic": "TOPIC", "group": "GROUP", "transactionalId": "TRANSACTIONAL_ID"}
    found = set()
    users = kustomize.load_documents(K8S / "overlays" / "prod" / "kafka-users.example.yaml")
    for user in users:
        assert user["kind"] == "KafkaUser"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            for op in acl["operations"]:
                found.add(
                    (
                        user["metadata"]["name"],
                        kinds[resource["type"]],
                        resource["name"],
                        resource["patternType"].upper(),
                        op.upper(),
                    )
                )
    wanted = {
        (g.user, g.resource.name, g.name, g.pattern.name, g.operation.name)
        for g in kafka_access.grants("")
    }
    assert found == wanted
    assert {u["metadata"]["name"] for u in users} == set(kafka_access.SERVICE_USERS)


def test_base_is_namespace_agnostic() -> None:
    """The base sets no namespace; each overlay puts everything in its own."""
    for obj in rendered("base"):
        assert "namespace" not in obj["metadata"], obj["metadata"]["name"]
    for overlay in OVERLAYS:
        for obj in rendered(overlay):
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == NAMESPACE[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_builder_matches_real_kustomize(overlay: str) -> None:
    """The fallback renders exactly what kustomize renders (so tests mean the same either way)."""
    command = kustomize.kustomize_command()
    if command is None:
        pytest.skip("no kustomize or kubectl here: the Python builder is used without comparison")
    directory = K8S / "overlays" / overlay
    ours = kustomize.build_fallback(directory)
    theirs = kustomize.build_with_tool(command, directory)
    kustomize.strip_generated_hashes(theirs, ours.generated)

    def normal(objects: list[Manifest]) -> dict[tuple[str, str, str], Manifest]:
        result = kustomize.index(objects)
        for obj in result.values():
            if obj["kind"] == "Secret":  # kustomize wraps long base64 lines
                obj["data"] = {k: base64.b64decode(v) for k, v in obj["data"].items()}
        return result

    mine, real = normal(ours.objects), normal(theirs)
    assert sorted(mine) == sorted(real)
    for key, obj in mine.items():
        assert obj == real[key], f"{key} differs"


def test_python_builder_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    """An unimplemented kustomize field is an error, never silently ignored."""
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(kustomize.UnsupportedKustomization, match="namePrefix"):
        kustomize.build_fallback(tmp_path)


def test_strategic_merge_merges_keyed_lists_and_replaces_others() -> None:
    """Containers merge by name, maps merge deeply, plain lists are replaced."""
    original: Manifest = {
        "containers": [
            {"name": "a", "args": ["x"], "resources": {"limits": {"cpu": "1"}}},
            {"name": "b"},
        ]
    }
    patch = {"containers": [{"name": "a", "args": ["y"], "resources": {"requests": {"cpu": 1}}}]}
    merged = kustomize.strategic_merge(original, patch)
    assert merged["containers"][0] == {
        "name": "a",
        "args": ["y"],
        "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": 1}},
    }
    assert merged["containers"][1] == {"name": "b"}
    assert original["containers"][0]["args"] == ["x"]


# --- every Deployment ----------------------------------------------------------------------

deployment_cases = pytest.mark.parametrize(
    ("overlay", "service"), [(o, s) for o in OVERLAYS for s in SERVICES]
)


@deployment_cases
def test_deployment_probes(overlay: str, service: str) -> None:
    """Startup and liveness on /healthz, readiness on /readyz, all on the service's own port."""
    container = main_container(find(rendered(overlay), "Deployment", service))
    port_names = {p["name"] for p in container["ports"]}
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, (probe, http)
        assert http["port"] in port_names or http["port"] == SERVICES[service]
        assert container[probe].get("timeoutSeconds", 1) >= 2
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, "too little time to start"


@deployment_cases
def test_deployment_resources(overlay: str, service: str) -> None:
    """CPU and memory have requests and limits, and requests fit within the limits."""
    resources = main_container(find(rendered(overlay), "Deployment", service))["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"], resources
        assert kind in resources["limits"], resources
    assert cpu(resources["requests"]["cpu"]) <= cpu(resources["limits"]["cpu"])
    assert memory(resources["requests"]["memory"]) <= memory(resources["limits"]["memory"])


@deployment_cases
def test_deployment_is_hardened(overlay: str, service: str) -> None:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, no API token."""
    deployment = find(rendered(overlay), "Deployment", service)
    spec = pod_spec(deployment)
    pod_ctx = spec["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True
    assert pod_ctx["runAsUser"] != 0
    assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault"
    ctx = main_container(deployment)["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert not ctx["capabilities"].get("add")
    assert spec["automountServiceAccountToken"] is False
    # Service links would inject SCOREBOARD_*-looking variables into our settings.
    assert spec["enableServiceLinks"] is False


@deployment_cases
def test_deployment_lifecycle(overlay: str, service: str) -> None:
    """Image per overlay, grace period beyond the drain, HPA-owned replica count."""
    deployment = find(rendered(overlay), "Deployment", service)
    container = main_container(deployment)
    assert container["image"] == EXPECTED_IMAGE[overlay]
    assert container["args"] == [service]
    assert service in console_scripts()
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pause = int(pre_stop[1]) if pre_stop else 0
    # aiohttp drains for up to 10 s after the preStop pause.
    assert grace >= pause + 10 + 5
    # An applied `replicas` would reset the autoscaler's choice on every deploy.
    assert "replicas" not in deployment["spec"]
    selector = deployment["spec"]["selector"]
    assert selector_matches(selector, deployment["spec"]["template"]["metadata"]["labels"])


@deployment_cases
def test_deployment_settings_come_from_config_and_secrets(overlay: str, service: str) -> None:
    """Shared settings from the ConfigMap, credentials only from Secrets, the agreed port."""
    objects = rendered(overlay)
    container = main_container(find(objects, "Deployment", service))
    config_refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert len(config_refs) == 1
    config = find(objects, "ConfigMap", config_refs[0])
    assert config["data"]["SCOREBOARD_HOST"] == "0.0.0.0"  # noqa: S104 (pods must listen on all)
    for key in config["data"]:
        assert key.startswith("SCOREBOARD_"), key
        assert not SECRET_SETTINGS.search(key), f"{key} is a credential in a ConfigMap"
    env = {e["name"]: e for e in container["env"]}
    assert env["SCOREBOARD_PORT"]["value"] == str(SERVICES[service])
    admin = SERVICES[service] + 1000  # the operator endpoints' port (common.health)
    assert env["SCOREBOARD_ADMIN_PORT"]["value"] == str(admin)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": SERVICES[service], "admin": admin}
    annotations = find(objects, "Deployment", service)["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == str(admin)
    for name, entry in env.items():
        if SECRET_SETTINGS.search(name):
            assert "value" not in entry, f"{name} is a plaintext value"
            assert "secretKeyRef" in entry["valueFrom"], name
    # Each service gets only the credentials it uses.
    kafka = "SCOREBOARD_KAFKA_PASSWORD"
    expected_secrets = {
        "gateway": {
            "SCOREBOARD_REDIS_URL",
            "SCOREBOARD_ACTION_HMAC_KEYS",
            kafka,
            "SCOREBOARD_COMMAND_KEYS",
            "SCOREBOARD_COMMAND_SIGNING_KID",
        },
        "auth": {
            "SCOREBOARD_POSTGRES_DSN",
            "SCOREBOARD_REDIS_URL",
            "SCOREBOARD_SIGNING_KEY_PASSPHRASE",
        },
        "score": {"SCOREBOARD_POSTGRES_DSN", kafka, "SCOREBOARD_COMMAND_KEYS"},
        "broadcaster": {"SCOREBOARD_POSTGRES_DSN", "SCOREBOARD_REDIS_URL", kafka},
    }[service]
    from_secrets = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
    assert from_secrets == expected_secrets
    # A PostgreSQL role and a Redis user of its own (common.db_access, common.redis_access).
    for variable, secret in (
        ("SCOREBOARD_POSTGRES_DSN", "scoreboard-postgres"),
        ("SCOREBOARD_REDIS_URL", "scoreboard-redis"),
    ):
        if variable in expected_secrets:
            name = env[variable]["valueFrom"]["secretKeyRef"]["name"]
            assert name.startswith(f"{secret}-{service}"), name
    if kafka in expected_secrets:  # a Kafka user of its own (common.kafka_access's ACLs)
        assert env["SCOREBOARD_KAFKA_USERNAME"]["value"] == service
        ref = env[kafka]["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith(f"scoreboard-kafka-{service}"), ref  # dev: name-hash
        assert ref["key"] == "password"
    # Every variable the service is given is one of its settings: pydantic-settings ignores
    # unknown variables, so a misspelt name would silently leave the default in place.
    fields = setting_names(service)
    for name in env:
        assert name in fields, f"{service} has no setting {name}"


def test_every_shared_config_key_is_some_service_setting() -> None:
    """Each ConfigMap key is read by at least one service (no dead or misspelt settings)."""
    every = set().union(*(setting_names(s) for s in SERVICES))
    for overlay in OVERLAYS:
        config = find_generated(rendered(overlay), "ConfigMap", "scoreboard-config")
        for key in config["data"]:
            assert key in every, f"no service reads {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_references_resolve(overlay: str) -> None:
    """dev: every referenced Secret/key is generated; prod: none is committed, all documented."""
    objects = rendered(overlay)
    example = {
        (doc["metadata"]["name"], key)
        for doc in kustomize.load_documents(K8S / "base" / "secret.example.yaml")
        for key in doc["stringData"]
    }
    refs = 0
    for workload in workloads(objects):
        for container in pod_spec(workload)["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if not ref:
                    continue
                refs += 1
                if overlay == "prod":
                    assert (ref["name"], ref["key"]) in example, ref
                else:
                    assert ref["key"] in find(objects, "Secret", ref["name"])["data"], ref
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    find(objects, "Secret", source["secretRef"]["name"])
    assert refs >= 8
    if overlay == "prod":
        assert not [o for o in objects if o["kind"] == "Secret"], "prod must not commit Secrets"


def test_no_secret_values_in_base_and_dev_values_are_marked() -> None:
    """The base holds no Secret and no credential; dev's generated ones say they are dev-only."""
    base = rendered("base")
    assert not [o for o in base if o["kind"] == "Secret"]
    kfile = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kfile.get("resources", [])
    assert "secretGenerator" not in kfile
    for doc in kustomize.load_documents(K8S / "base" / "secret.example.yaml"):
        for value in doc["stringData"].values():
            assert "REPLACE" in value or "PASSWORD" in value, value
    for secret in (o for o in rendered("dev") if o["kind"] == "Secret"):
        for key, value in secret["data"].items():
            if not CREDENTIAL_KEYS.search(key):
                continue  # a user or database name
            text = base64.b64decode(value).decode()
            assert "dev-only" in text, f"{secret['metadata']['name']}.{key} is not marked dev-only"


@deployment_cases
def test_autoscaler_targets_the_deployment(overlay: str, service: str) -> None:
    """An autoscaling/v2 HPA scales it between sane bounds; score stays <= the partition count."""
    objects = rendered(overlay)
    hpas = [
        o
        for o in objects
        if o["kind"] == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"]
        == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    ]
    assert len(hpas) == 1
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert spec["metrics"], "an HPA needs a metric"
    if overlay == "prod":
        assert spec["minReplicas"] >= 2, "production keeps a spare replica"
    if service == "score":
        partitions = next(t.partitions for t in topic_specs() if t.name.endswith("commands.v1"))
        assert spec["maxReplicas"] <= partitions, "more consumers than partitions would idle"


@deployment_cases
def test_disruption_budget_covers_only_that_service(overlay: str, service: str) -> None:
    """A PDB selects this service's pods and no other's, and always allows one eviction."""
    objects = rendered(overlay)
    labels = find(objects, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
    pdbs = [
        o
        for o in objects
        if o["kind"] == "PodDisruptionBudget" and selector_matches(o["spec"]["selector"], labels)
    ]
    assert len(pdbs) == 1
    assert pdbs[0]["apiVersion"] == "policy/v1"
    assert pdbs[0]["spec"].get("maxUnavailable", 0) >= 1 or "minAvailable" in pdbs[0]["spec"]
    for other in workloads(objects):
        if other["metadata"]["name"] != service:
            other_labels = other["spec"]["template"]["metadata"].get("labels", {})
            assert not selector_matches(pdbs[0]["spec"]["selector"], other_labels)


@deployment_cases
def test_service_routes_to_the_container_port(overlay: str, service: str) -> None:
    """The Service selects exactly these pods, and its targetPort is a real container port."""
    objects = rendered(overlay)
    deployment = find(objects, "Deployment", service)
    svc = find(objects, "Service", service)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    for other in workloads(objects):
        if other["metadata"]["name"] != service:
            other_labels = other["spec"]["template"]["metadata"].get("labels", {})
            assert not svc["spec"]["selector"].items() <= other_labels.items()
    ports = {p["name"]: p["containerPort"] for p in main_container(deployment)["ports"]}
    (port,) = svc["spec"]["ports"]
    target = port["targetPort"]
    resolved = ports[target] if isinstance(target, str) else target
    assert resolved in ports.values()
    assert port["port"] == SERVICES[service] == resolved


def test_broadcaster_replica_id_comes_from_the_pod_name() -> None:
    """Each broadcaster pod is its own consumer group, named by the downward API."""
    for overlay in OVERLAYS:
        container = main_container(find(rendered(overlay), "Deployment", "broadcaster"))
        env = {e["name"]: e for e in container["env"]}
        ref = env["SCOREBOARD_REPLICA_ID"]["valueFrom"]["fieldRef"]
        assert ref["fieldPath"] == "metadata.name"


def test_score_rollout_never_exceeds_the_partitions() -> None:
    """A surge pod above 12 consumers would never be assigned, never ready, and stall rollouts."""
    for overlay in OVERLAYS:
        strategy = find(rendered(overlay), "Deployment", "score")["spec"]["strategy"]
        assert strategy["rollingUpdate"]["maxSurge"] == 0
        assert strategy["rollingUpdate"]["maxUnavailable"] >= 1


# --- the network ---------------------------------------------------------------------------

# Outside the scoreboard's namespace: who may and may not reach it.
INGRESS_CONTROLLER = Pod(
    "ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
)
PROMETHEUS = Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
STRANGER = Pod("stranger", "other-team", {"app": "curious"})
KUBE_DNS = Pod("coredns", "kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
INTERNET = Pod("internet", "", {}, external=True)
EXTERNAL_DATASTORES = {
    "postgres": Pod("pg", "databases", {"scoreboard.io/datastore": "postgres"}, {"pg": 5432}),
    "redis": Pod("redis", "databases", {"scoreboard.io/datastore": "redis"}, {"redis": 6379}),
    "kafka": Pod("kafka", "kafka", {"scoreboard.io/datastore": "kafka"}, {"kafka": 9092}),
}
DATASTORE_PORTS = {"postgres": 5432, "redis": 6379, "kafka": 9092}
# Which datastores each of our pods may reach; anything else must be refused.
NEEDS = {
    "gateway": {"redis", "kafka"},
    "auth": {"postgres", "redis"},
    "score": {"postgres", "kafka"},
    "broadcaster": {"postgres", "redis", "kafka"},
    "scoreboard-migrate": {"postgres", "kafka"},
}


def _network(overlay: str) -> tuple[list[Manifest], dict[str, Pod]]:
    objects = rendered(overlay)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = {_workload_name(w): pods_from_template(w) for w in workloads(objects)}
    return policies, pods


def _workload_name(workload: Manifest) -> str:
    """Its name, without the migration Job's per-release suffix."""
    name: str = workload["metadata"]["name"]
    return "scoreboard-migrate" if workload["kind"] == "Job" else name


def _datastore(overlay: str, pods: dict[str, Pod], name: str) -> Pod:
    # dev runs the datastores in the namespace; prod reaches them elsewhere.
    return pods[name] if overlay == "dev" else EXTERNAL_DATASTORES[name]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_denies_by_default_and_every_pod_has_a_policy(overlay: str) -> None:
    """A default-deny policy covers the namespace, and each pod has its own allow-list."""
    policies, pods = _network(overlay)
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny[0]["spec"].get("ingress")
    assert not deny[0]["spec"].get("egress")
    for pod in pods.values():
        own = [
            p
            for p in policies
            if p["spec"]["podSelector"] != {}
            and selector_matches(p["spec"]["podSelector"], pod.labels)
        ]
        assert own, f"no NetworkPolicy selects {pod.name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_who_may_reach_each_service(overlay: str) -> None:
    """gateway: anyone; auth, broadcaster: the gateway; score: nobody; the operator port of
    each: Prometheus only."""
    policies, pods = _network(overlay)
    gw, auth, score, bc = (pods[n] for n in ("gateway", "auth", "score", "broadcaster"))
    for client in (INGRESS_CONTROLLER, STRANGER, PROMETHEUS):
        assert allowed(policies, client, gw, "http"), client.name
    for pod in (gw, auth, score, bc):
        assert allowed(policies, PROMETHEUS, pod, "admin"), pod.name
        for intruder in (INGRESS_CONTROLLER, STRANGER):
            assert not allowed(policies, intruder, pod, "admin"), (intruder.name, pod.name)

    assert allowed(policies, gw, auth, "http")
    assert allowed(policies, gw, bc, "http")
    for internal in (auth, bc, score):
        for intruder in (INGRESS_CONTROLLER, STRANGER):
            assert not allowed(policies, intruder, internal, "http"), (intruder.name, internal.name)
    assert not allowed(policies, gw, score, "http"), "nothing but scraping reaches score"
    assert not allowed(policies, PROMETHEUS, score, "http")
    assert not allowed(policies, bc, auth, "http")
    assert not allowed(policies, score, bc, "http")
    assert not allowed(policies, auth, bc, "http")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_only_to_what_each_pod_needs(overlay: str) -> None:
    """Each pod reaches DNS and its own datastores, and nothing else (not the internet)."""
    policies, pods = _network(overlay)
    for name, needs in NEEDS.items():
        pod = pods[name]
        assert allowed(policies, pod, KUBE_DNS, 53, "UDP"), name
        assert allowed(policies, pod, KUBE_DNS, 53, "TCP"), name
        assert not allowed(policies, pod, INTERNET, 443), name
        for store, port in DATASTORE_PORTS.items():
            target = _datastore(overlay, pods, store)
            assert allowed(policies, pod, target, port) == (store in needs), (name, store)


def test_dev_datastores_accept_only_scoreboard_pods() -> None:
    """In dev the in-namespace datastores refuse other namespaces' pods."""
    policies, pods = _network("dev")
    clients = {"postgres": pods["score"], "redis": pods["gateway"], "kafka": pods["score"]}
    for store, port in DATASTORE_PORTS.items():
        assert allowed(policies, clients[store], pods[store], port), store
        assert not allowed(policies, STRANGER, pods[store], port), store
        assert not allowed(policies, INGRESS_CONTROLLER, pods[store], port), store


# --- ingress, migration job, pod security ---------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_reaches_the_gateway_with_websocket_timeouts(overlay: str) -> None:
    """All paths go to the gateway's Service port, with idle timeouts far above the ping period."""
    objects = rendered(overlay)
    ingress = find(objects, "Ingress", "gateway")
    service = find(objects, "Service", "gateway")
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "gateway"
            assert backend["port"]["name"] in service_ports
    assert [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]] == ["/"]
    notes = ingress["metadata"]["annotations"]
    # The server pings every 20-30 s; the proxy must not cut a quiet but healthy socket.
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 300
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 300
    if overlay == "prod":
        assert ingress["spec"]["tls"]
        assert all(r.get("host") for r in ingress["spec"]["rules"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_migrates_then_creates_topics(overlay: str) -> None:
    """One Job runs both idempotent one-shots, hardened like the services, and gives up in time."""
    job = find(rendered(overlay), "Job", f"scoreboard-migrate-{OVERLAY_TAG[overlay]}")
    spec = pod_spec(job)
    (container,) = spec["containers"]
    assert container["image"] == EXPECTED_IMAGE[overlay]
    script = " ".join(container["command"] + container.get("args", []))
    assert re.search(r"scoreboard-migrate\s*&&\s*scoreboard-topics", script)
    assert {"scoreboard-migrate", "scoreboard-topics"} <= console_scripts()
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]
    assert container["resources"]["requests"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    """The namespace enforces `restricted`, so every pod (dev datastores too) must satisfy it."""
    objects = rendered(overlay)
    namespace = find(objects, "Namespace", NAMESPACE[overlay])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads(objects):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not spec.get("hostNetwork"), name
        assert not spec.get("hostPID"), name
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert not ctx.get("privileged"), name
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workload_selectors_match_their_pod_labels(overlay: str) -> None:
    """Every Deployment and StatefulSet selects the pods its own template creates."""
    for workload in workloads(rendered(overlay)):
        if workload["kind"] == "Job":
            continue  # Jobs generate their selector
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector_matches(workload["spec"]["selector"], labels), workload["metadata"]["name"]


def test_dev_redis_declares_each_service_user_with_its_acl() -> None:
    """The dev Redis' arguments carry common.redis_access's rules for prefix sb:."""
    redis = main_container(find(rendered("dev"), "StatefulSet", "redis"))
    args = redis["args"]
    declared = {}
    for i, arg in enumerate(args):
        if arg == "--user":
            rest = args[i + 1 :]
            end = next((j for j, a in enumerate(rest) if a.startswith("--")), len(rest))
            declared[rest[0]] = rest[1:end]
    assert set(declared) == set(redis_access.SERVICES)
    for service, rules in declared.items():
        password = f"$(REDIS_{service.upper()}_PASSWORD)"
        assert rules == redis_access.acl_rules(service, "sb:", password)[1:]
    assert args[args.index("--requirepass") + 1] == "$(REDISCLI_AUTH)"


# --- monitoring (components/monitoring, for the Prometheus Operator) ----------------------


def test_prod_carries_the_alert_rules_exactly_as_alerts_yml() -> None:
    """The PrometheusRule's groups are deploy/prometheus/alerts.yml's, rule for rule."""
    rule = find(rendered("prod"), "PrometheusRule", "scoreboard")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE["prod"]
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_prod_pod_monitor_scrapes_every_service_admin_port_as_its_job() -> None:
    """It selects each service's pods (and nothing else), on the port named `admin` that
    serves /metrics, with job = the service name the alert rules match on."""
    objects = rendered("prod")
    monitor = find(objects, "PodMonitor", "scoreboard")
    spec = monitor["spec"]
    assert monitor["metadata"]["namespace"] == NAMESPACE["prod"]
    [endpoint] = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "admin"
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True
    selected = set()
    for workload in workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if selector_matches(spec["selector"], labels):
            selected.add(workload["metadata"]["name"])
            assert labels[spec["jobLabel"]] == workload["metadata"]["name"]
            admin = {p["name"]: p["containerPort"] for p in main_container(workload)["ports"]}
            assert admin["admin"] == SERVICES[workload["metadata"]["name"]] + 1000
    assert selected == set(SERVICES)
    alerts = (REPO / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert 'job=~"gateway|auth|score|broadcaster"' in alerts


def test_monitoring_component_is_optional_for_dev() -> None:
    """dev (kind, minikube) has no Prometheus Operator CRDs, so it must not carry their kinds."""
    kinds = {o["kind"] for o in rendered("dev")}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


# --- the migration Job, safe to re-apply ----------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_is_named_after_its_image_tag(overlay: str) -> None:
    """A Job's pod template is immutable: one name per release lets `kubectl apply -k` create a
    new Job for a new tag, while re-applying a release finds its Job unchanged. The name must
    stay a valid Job name (its pods carry it as a label value: 63 characters at most)."""
    jobs = [o for o in rendered(overlay) if o["kind"] == "Job"]
    assert len(jobs) == 1
    [job] = jobs
    tag = pod_spec(job)["containers"][0]["image"].rsplit(":", 1)[1]
    assert tag == OVERLAY_TAG[overlay]
    assert job["metadata"]["name"] == f"scoreboard-migrate-{tag}"
    assert _DNS_LABEL.match(job["metadata"]["name"])


def test_a_new_image_tag_renames_the_migration_job(tmp_path: Path) -> None:
    """`kustomize edit set image ...:<version>` (docs/operations.md, "Deploy") moves the Job's
    name with it: prod with another tag renders scoreboard-migrate-<that tag>."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    prod = tree / "overlays" / "prod"
    spec = yaml.safe_load((prod / "kustomization.yaml").read_text())
    spec["images"][0]["newTag"] = "0.2.0"
    (prod / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    command = kustomize.kustomize_command()
    objects = (
        kustomize.build_fallback(prod).objects
        if command is None
        else kustomize.build_with_tool(command, prod)
    )
    [job] = [o for o in objects if o["kind"] == "Job"]
    assert job["metadata"]["name"] == "scoreboard-migrate-0.2.0"
    assert pod_spec(job)["containers"][0]["image"].endswith(":0.2.0")
