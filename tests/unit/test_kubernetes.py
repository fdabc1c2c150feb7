"""deploy/kubernetes: every manifest valid for a pinned Kubernetes version (strict: unknown fields fail),
the Prometheus Operator and KEDA kinds valid for their vendored CRD schemas, the overlay's patches on
objects and paths of the base, checkov's security scan clean, and the manifests true to the service
(env overrides, probe paths and port, the config file, the image's user and writable directory).

No cluster: nothing here is applied anywhere."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stream_monitor import web
from stream_monitor.config import ENV_PREFIX, env_keys, load_config

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = sorted(p.parent for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
CRDS = Path(__file__).resolve().parents[1] / "crds"
# The Kubernetes version the manifests are validated against (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.33.0"
# Kinds of custom resources: their schema is the CRD's, vendored under tests/crds (source in each file's
# header comment), not Kubernetes'.
CRD_FILES = {("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
             ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
             ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
             ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml"}
CHECKOV = Path(sys.prefix) / ".checkov" / "bin" / "checkov"  # make test-setup installs it there


# --- reading the manifests, and a kustomize build of the little that they use -------------------------


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    (doc,) = load_yaml(directory / "kustomization.yaml")
    assert doc["kind"] == "Kustomization", directory
    known = {"apiVersion", "kind", "resources", "images", "patches"}
    assert set(doc) <= known, f"{directory}: this test builds only {sorted(known)}, not {sorted(set(doc) - known)}"
    return doc


def json_pointer(path: str) -> list[str | int]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    return [int(p) if p.isdigit() else p for p in parts]


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """RFC 6902 ``replace`` and ``add`` (what the overlays use): a ``replace`` path must exist, the parent
    of an ``add`` path must."""
    doc = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in ("replace", "add"), f"{where}: op {op['op']!r} is not supported by this test"
        *parents, last = json_pointer(op["path"])
        node: Any = doc
        for part in parents:
            assert (part in node) if isinstance(node, dict) else (isinstance(part, int) and part < len(node)), \
                f"{where}: {op['path']} does not exist in the base"
            node = node[part]
        if op["op"] == "replace":
            exists = last in node if isinstance(node, dict) else isinstance(last, int) and last < len(node)
            assert exists, f"{where}: {op['path']} does not exist in the base (replace needs it)"
        node[last] = op["value"]
    return doc


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k directory`` would apply: resources (files or directories), then
    images, then JSON patches by kind and name."""
    spec = kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        objects += build(path) if path.is_dir() else load_yaml(path)
    for image in spec.get("images", []):
        hits = 0
        for obj in objects:
            for container in pod_spec(obj).get("containers", []) if pod_spec(obj) else []:
                if container["image"].split("@")[0].rsplit(":", 1)[0] == image["name"]:
                    hits += 1
                    ref = image.get("newName", image["name"])
                    container["image"] = f"{ref}@{image['digest']}" if "digest" in image else f"{ref}:{image['newTag']}"
        assert hits, f"{directory}: images names {image['name']!r}, which no container of the base uses"
    for patch in spec.get("patches", []):
        target = patch["target"]
        matches = [i for i, obj in enumerate(objects)
                   if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]]
        assert len(matches) == 1, f"{directory}: patch target {target} matches {len(matches)} objects of the base"
        objects[matches[0]] = apply_json_patch(objects[matches[0]], yaml.safe_load(patch["patch"]),
                                               f"{directory.name} patch of {target['kind']}/{target['name']}")
    return objects


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    return obj["spec"]["template"]["spec"] if obj.get("kind") == "Deployment" else None


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


BASE_OBJECTS = build(BASE)
BUILDS = {"base": BASE, **{f"overlays/{d.name}": d for d in OVERLAYS}}  # name → directory


@functools.cache
def _built(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(build(BUILDS[name]))


def built(name: str) -> list[dict[str, Any]]:
    """The objects of the base or an overlay (a fresh copy for each test)."""
    return copy.deepcopy(list(_built(name)))
DEPLOYMENT = one(BASE_OBJECTS, "Deployment")
CONTAINER = pod_spec(DEPLOYMENT)["containers"][0]
POD_LABELS = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_overlays_patches_name_objects_and_paths_of_the_base(name):
    """kustomize applies the overlays; here `build` applies their JSON patches and images itself and
    fails on a target or a path the base does not have."""
    assert built(name)


def test_the_base_lists_every_manifest_beside_it_and_there_is_an_overlay():
    listed = set(kustomization(BASE)["resources"])
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert OVERLAYS, "no overlay under deploy/kubernetes/overlays"


# --- schemas: Kubernetes' for its own kinds, the CRDs' for the others -----------------------------------


def strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server's strict field validation reads it: an object with
    ``properties`` and no ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields`` has
    no other field (the server would drop or refuse it)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) if key not in ("enum", "required", "default", "example") else value
           for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    (crd,) = load_yaml(CRDS / CRD_FILES[(api_version, kind)])
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"], f"{api_version} {kind} is not served by the vendored CRD"
    return jsonschema.Draft4Validator(strict(served["schema"]["openAPIV3Schema"]))


def validation_errors(obj: dict[str, Any]) -> list[str]:
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_FILES:
        return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in crd_validator(*key).iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_object_is_valid_for_the_pinned_kubernetes_or_its_crd(name):
    """Kubernetes' own kinds against kubernetes-validate's schemas of KUBERNETES_VERSION with unknown
    fields refused; PodMonitor, PrometheusRule, ScaledObject and TriggerAuthentication against their CRD's
    schema."""
    objects = built(name)
    assert {(o["apiVersion"], o["kind"]) for o in objects} >= set(CRD_FILES)
    problems = {f"{o['kind']}/{o['metadata']['name']}": errors for o in objects if (errors := validation_errors(o))}
    assert not problems, f"{name}: {json.dumps(problems, indent=2)}"


def test_every_kubernetes_kind_has_a_schema_at_the_pinned_version():
    """A kind kubernetes-validate has no schema for raises; none of ours is left unchecked that way."""
    for obj in BASE_OBJECTS:
        if (obj["apiVersion"], obj["kind"]) not in CRD_FILES:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises SchemaNotFoundError


@pytest.mark.parametrize("change, complaint", [
    (lambda o: o["spec"]["triggers"][0].update(lagThresold="5"), "Additional properties"),
    (lambda o: o["spec"].update(maxReplicas=6), "Additional properties"),
    (lambda o: o["spec"].pop("scaleTargetRef"), "'scaleTargetRef' is a required property"),
    (lambda o: o["spec"]["triggers"][0].pop("type"), "'type' is a required property"),
])
def test_the_crd_check_would_catch_a_wrong_scaled_object(change, complaint):
    wrong = copy.deepcopy(one(BASE_OBJECTS, "ScaledObject"))
    change(wrong)
    assert any(complaint in error for error in validation_errors(wrong))


def test_the_kubernetes_check_would_catch_an_unknown_field():
    wrong = copy.deepcopy(DEPLOYMENT)
    pod_spec(wrong)["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}}
    assert validation_errors(wrong)


# --- checkov: security defaults --------------------------------------------------------------------------


def test_checkov_finds_no_failed_check_and_every_skip_says_why():
    assert CHECKOV.exists(), (f"checkov is not installed at {CHECKOV}: run `make test-setup` (it installs "
                              "checkov into its own virtualenv there)")
    run = subprocess.run([str(CHECKOV), "-d", str(KUBERNETES), "--framework", "kubernetes", "--skip-download",
                          "--output", "json"], capture_output=True, text=True, timeout=300, check=False)
    assert run.stdout.strip(), f"checkov printed nothing (exit {run.returncode}): {run.stderr[-2000:]}"
    report = json.loads(run.stdout)
    summary, results = report["summary"], report["results"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in results["failed_checks"]]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0 and summary["passed"] > 50, summary
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 40, f"{check['check_id']} is skipped without a reason: {reason!r}"
    assert run.returncode == 0, run.stderr[-2000:]


# --- true to the service ---------------------------------------------------------------------------------


def config_file(objects: list[dict[str, Any]]) -> str:
    return one(objects, "ConfigMap")["data"]["config.toml"]


def env_names(container: dict[str, Any]) -> list[str]:
    return [item["name"] for item in container.get("env", [])]


def test_the_deployments_env_vars_are_real_env_overrides():
    """Each variable names a key an environment override exists for (a typo would be ignored silently)."""
    known = env_keys()
    names = env_names(CONTAINER)
    assert {"STREAM_MONITOR_KAFKA_SASL_USERNAME", "STREAM_MONITOR_KAFKA_SASL_PASSWORD", "STREAM_MONITOR_REDIS_URL"} <= set(names)
    for name in names:
        section, _, key = name.removeprefix(ENV_PREFIX).lower().partition("_")
        assert name.startswith(ENV_PREFIX) and (section, key) in known, f"{name} overrides no config key"


def test_credentials_come_from_secret_references_only():
    secrets = set()
    for item in CONTAINER["env"]:
        assert "value" not in item, f"{item['name']} is set in the manifest, not from a Secret"
        ref = item["valueFrom"]["secretKeyRef"]
        secrets.add((ref["name"], ref["key"]))
    assert len({name for name, _ in secrets}) == 1
    auth = one(BASE_OBJECTS, "TriggerAuthentication")
    keda = {(ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert keda <= secrets, "KEDA must read the lag with the service's own Kafka credentials"
    readme = (KUBERNETES / "README.md").read_text(encoding="utf-8")
    for name, key in secrets:
        assert name in readme and key in readme, f"deploy/kubernetes/README.md does not say how to create {name}/{key}"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_configmaps_config_file_loads_with_the_deployments_environment(name, tmp_path):
    """The mounted file with the variables the Secret supplies: what `run` would load at start."""
    path = tmp_path / "config.toml"
    path.write_text(config_file(built(name)), encoding="utf-8")
    path.chmod(0o600)
    environ = {"STREAM_MONITOR_KAFKA_SASL_USERNAME": "monitor", "STREAM_MONITOR_KAFKA_SASL_PASSWORD": "Secret-Pass-1",
               "STREAM_MONITOR_REDIS_URL": "rediss://monitor:Secret-Pass-2@redis.redis.svc:6380/0"}
    assert set(environ) == set(env_names(pod_spec(one(built(name), "Deployment"))["containers"][0]))
    config = load_config(path, environ=environ)
    assert config.kafka.consumer["sasl.password"] == "Secret-Pass-1" == config.kafka.producer["sasl.password"]
    assert config.kafka.consumer["security.protocol"] == "SASL_SSL" == config.kafka.producer["security.protocol"]
    assert config.redis.url.startswith("rediss://monitor:")
    # A pod's probes and Prometheus reach the endpoint from outside the container: not on loopback.
    assert config.service.metrics_host == "0.0.0.0"


def test_probes_and_ports_are_the_services():
    config = load_config_text(config_file(BASE_OBJECTS))
    (port,) = CONTAINER["ports"]
    assert port["containerPort"] == config.service.metrics_port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = CONTAINER[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, port["name"])
        # answered at once and without credentials by the HTTP server (web.py)
        assert web._is_probe(f"GET {get['path']} HTTP/1.1".encode())
    service = one(BASE_OBJECTS, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    monitor = one(BASE_OBJECTS, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    policy = one(BASE_OBJECTS, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == port["name"]


def load_config_text(text: str):
    import tomllib

    from stream_monitor.config import parse_config

    return parse_config(tomllib.loads(text), environ={})


def test_every_selector_selects_the_pods():
    selectors = {"Deployment": DEPLOYMENT["spec"]["selector"]["matchLabels"],
                 "Service": one(BASE_OBJECTS, "Service")["spec"]["selector"],
                 "PodDisruptionBudget": one(BASE_OBJECTS, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                 "PodMonitor": one(BASE_OBJECTS, "PodMonitor")["spec"]["selector"]["matchLabels"],
                 "NetworkPolicy": one(BASE_OBJECTS, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]}
    for kind, labels in selectors.items():
        assert labels and labels.items() <= POD_LABELS.items(), f"{kind} does not select the Deployment's pods"
    namespaces = {obj["metadata"].get("namespace") for obj in BASE_OBJECTS if obj["kind"] != "Namespace"}
    assert namespaces == {one(BASE_OBJECTS, "Namespace")["metadata"]["name"]}


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_the_pod_runs_as_the_images_user_locked_down():
    uid, gid = re.search(r"^USER (\d+):(\d+)$", dockerfile(), re.M).groups()
    pod, container = pod_spec(DEPLOYMENT)["securityContext"], CONTAINER["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["runAsNonRoot"]) == (int(uid), int(gid), True)
    assert container["readOnlyRootFilesystem"] is True and container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"] and "add" not in container["capabilities"]
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec(DEPLOYMENT)["automountServiceAccountToken"] is False
    resources = CONTAINER["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and {"cpu", "memory"} <= resources["limits"].keys()


def test_the_directory_the_service_writes_is_an_empty_dir():
    """With a read-only root filesystem numba's cache (NUMBA_CACHE_DIR) must be a writable mount, or the
    entrypoint refuses to start."""
    cache = re.search(r"NUMBA_CACHE_DIR=(\S+)", dockerfile()).group(1)
    volumes = {v["name"]: v for v in pod_spec(DEPLOYMENT)["volumes"]}
    mounts = [m for m in CONTAINER["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    assert any(cache == m["mountPath"] or cache.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts), cache
    config_mount = next(m for m in CONTAINER["volumeMounts"] if "configMap" in volumes[m["name"]])
    assert config_mount["readOnly"] is True
    config_arg = CONTAINER["args"][CONTAINER["args"].index("-c") + 1]
    assert config_arg == f"{config_mount['mountPath']}/config.toml"


def test_the_grace_period_covers_the_shutdown_checkpoint():
    """`run` checkpoints and leaves the group within 10 s of SIGTERM (what its tests assert)."""
    assert pod_spec(DEPLOYMENT)["terminationGracePeriodSeconds"] >= 20


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_scaled_object_scales_the_deployment_on_the_groups_lag(name):
    """KEDA's trigger metadata is a free-form map in its CRD: its keys are checked here, against the
    service's own broker, group and input topic."""
    objects = built(name)
    scaled, deployment = one(objects, "ScaledObject"), one(objects, "Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the replica count is KEDA's"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["authenticationRef"]["name"] == one(objects, "TriggerAuthentication")["metadata"]["name"]
    meta = trigger["metadata"]
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= meta.keys()
    assert all(isinstance(value, str) for value in meta.values())
    config = load_config_text(config_file(objects))
    assert meta["bootstrapServers"] == config.kafka.bootstrap_servers
    assert meta["consumerGroup"] == config.kafka.group_id
    assert config.kafka.input_topics == (meta["topic"],)
    assert int(meta["lagThreshold"]) > config.service.checkpoint_interval_events  # lag between two commits
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_the_base_caps_the_pods_at_the_input_topics_partition_count():
    meta = one(BASE_OBJECTS, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    scaled = one(BASE_OBJECTS, "ScaledObject")
    # the partition count of the input topic as the project creates it (docker-compose.yml)
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    partitions = int(re.search(rf"--topic {re.escape(meta['topic'])} --partitions (\d+)", compose).group(1))
    assert scaled["spec"]["maxReplicaCount"] == partitions
    assert f"({partitions} for {meta['topic']})" in (BASE / "scaledobject.yaml").read_text(encoding="utf-8")
