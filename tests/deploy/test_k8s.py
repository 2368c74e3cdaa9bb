"""The Kubernetes manifests (deploy/k8s): valid for Kubernetes 1.30, and saying what they mean.

Schema validation uses kubernetes-validate (its schemas ship in the wheel: no network). The
kustomize output is rendered with ``kubectl kustomize`` (or a standalone ``kustomize``); without
either, the tests that need a render are skipped here and fail under CI. Beyond the schemas:
every container non-root with limits, the aggregator on a GPU tolerating spot taints and resumed
by its Job, the serving HPA and PDB on the serving pods, every referenced Secret, ConfigMap and
PVC either rendered or listed in docs/deploy.md ("Objects you create"), every file path a
container is given present in what is mounted there, probes on routes the serving app answers,
Service target ports that exist. The aggregator's completion check runs on real checkpoints; its
driver script runs with stand-ins for flower-superexec and fedpm (a real run takes minutes:
tests/aggregator/test_resume.py covers the resume itself).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import numpy as np
import pytest
import yaml

from aggregator.checkpoint import Checkpoint, CheckpointStore
from aggregator.rounds import RoundLog

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
SCRIPTS = BASE / "aggregator"
KUSTOMIZATIONS = [BASE, *sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())]
K8S_IDS = [str(p.relative_to(K8S)) for p in KUSTOMIZATIONS]
#: the oldest Kubernetes the manifests are for (docs/deploy.md), and a newer one
K8S_VERSIONS = ("1.30.0", "1.33.0")
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SPOT_TAINTS = {
    ("cloud.google.com/gke-spot", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
    ("karpenter.sh/capacity-type", "spot"),
}
Doc = dict[str, Any]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML was built with it


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads its schema files at every call; read each once here."""
    with pytest.MonkeyPatch.context() as patch:
        cached = functools.cache(kubernetes_validate.utils.schema_contents)
        patch.setattr(kubernetes_validate.utils, "schema_contents", cached)
        yield


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def _render_text(directory: Path) -> str:
    command = _kustomize_command()
    if command is None:
        if _under_ci():
            pytest.fail("neither kustomize nor kubectl is installed: cannot render deploy/k8s")
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@functools.cache
def render(directory: Path) -> list[Doc]:
    """The documents kustomize renders for ``directory`` (shared between tests: do not modify)."""
    return [d for d in yaml.load_all(_render_text(directory), Loader=_LOADER) if d]


def _objects(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = _objects(docs, kind)
    assert name in found, f"no {kind} {name} rendered"
    return found[name]


def _pod_templates(docs: list[Doc]) -> Iterator[tuple[str, Doc, dict[str, str]]]:
    """(workload name, pod spec, pod labels) of every workload."""
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            template = doc["spec"]["template"]
            yield doc["metadata"]["name"], template["spec"], template["metadata"]["labels"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _documented_objects() -> dict[tuple[str, str], set[str]]:
    """``(kind, name) -> keys`` from the table under "Objects you create" in docs/deploy.md."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text.split("### Objects you create", 1)[1].split("\n#", 1)[0]
    rows: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in {"Secret", "ConfigMap"}:
            keys = {k.strip().strip("`") for k in cells[2].split(",") if k.strip()}
            rows[(cells[0], cells[1].strip("`"))] = keys
    assert rows, "docs/deploy.md lists no objects under 'Objects you create'"
    return rows


def _references(spec: Doc) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, ConfigMap and PVC a pod spec refers to."""
    found: set[tuple[str, str]] = set()
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            found.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            found.add(("ConfigMap", volume["configMap"]["name"]))
        if "persistentVolumeClaim" in volume:
            found.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
    for container in spec.get("initContainers", []) + spec["containers"]:
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                found.add(("Secret", source["secretRef"]["name"]))
            if "configMapRef" in source:
                found.add(("ConfigMap", source["configMapRef"]["name"]))
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "secretKeyRef" in ref:
                found.add(("Secret", ref["secretKeyRef"]["name"]))
            if "configMapKeyRef" in ref:
                found.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
    return found


def _mounted_files(docs: list[Doc], spec: Doc, container: Doc) -> dict[str, set[str] | None]:
    """mountPath -> the file names it holds (None: a writable or volume mount, any name)."""
    documented = _documented_objects()
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, set[str] | None] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        names: set[str] | None = None
        for kind, field, key in (
            ("Secret", "secret", "secretName"),
            ("ConfigMap", "configMap", "name"),
        ):
            if field in volume:
                source = volume[field]
                if "items" in source:
                    names = {item["path"] for item in source["items"]}
                elif source[key] in _objects(docs, kind):
                    names = set(_objects(docs, kind)[source[key]].get("data", {}))
                else:
                    names = documented.get((kind, source[key]), set())
        if "subPath" in mount:
            names = None  # a single file mounted as itself
        mounts[mount["mountPath"].rstrip("/")] = names
    return mounts


def _port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"container {container['name']} has no port named {port!r}"
    return int(numbers[0])


def _container(docs: list[Doc], kind: str, name: str) -> tuple[Doc, Doc]:
    spec = _one(docs, kind, name)["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def _env(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _check_pod_security(name: str, spec: Doc) -> None:
    """Non-root, no escalation, read-only root, capabilities dropped, limits, a pinned image."""
    pod_sc = spec.get("securityContext", {})
    assert spec.get("automountServiceAccountToken") is False, name
    assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
    for container in spec.get("initContainers", []) + spec["containers"]:
        where = f"{name}/{container['name']}"
        sc = {**pod_sc, **container.get("securityContext", {})}
        assert sc.get("runAsNonRoot") is True, where
        assert isinstance(sc.get("runAsUser"), int), where
        assert sc["runAsUser"] > 0, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where} {part}"
        image = container["image"]
        assert re.search(r":[\w.-]+$", image), where
        assert not image.endswith(":latest"), where


# --- files and kustomizations -----------------------------------------------------------------


def _kustomization(directory: Path) -> Doc:
    doc = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _referenced_paths(directory: Path) -> tuple[set[Path], set[Path]]:
    """(resource files, patch files) a kustomization names; raises on a missing one."""
    kz = _kustomization(directory)
    resources, patches = set(), set()
    for entry in kz.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}: resource {entry} does not exist"
        if path.is_file():
            resources.add(path)
    for patch in kz.get("patches", []):
        path = (directory / patch["path"]).resolve()
        assert path.is_file(), f"{directory}: patch {patch['path']} does not exist"
        patches.add(path)
    for generator in kz.get("configMapGenerator", []) + kz.get("secretGenerator", []):
        for entry in generator.get("files", []) + generator.get("envs", []):
            source = entry.split("=", 1)[-1]
            assert (directory / source).is_file(), f"{directory}: {source} does not exist"
    return resources, patches


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_kustomization_references_resolve_and_no_manifest_is_forgotten(directory: Path) -> None:
    # Prepare / Execute
    resources, patches = _referenced_paths(directory)

    # Assert: every YAML file of the folder is used, as a resource or as a patch
    yaml_files = {p.resolve() for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert yaml_files == resources | patches


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_base_manifest_file_validates_without_rendering(version: str) -> None:
    # Prepare
    resources, _ = _referenced_paths(BASE)
    docs = [d for path in sorted(resources) for d in yaml.safe_load_all(path.read_text()) if d]

    # Execute / Assert (strict: a misspelt field is an error, not ignored)
    assert len(docs) >= 20
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_a_misspelt_field() -> None:
    # Prepare: the serving Deployment with one field misspelt
    docs = yaml.safe_load_all((BASE / "serving.yaml").read_text())
    doc = next(d for d in docs if d and d["kind"] == "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}

    # Execute / Assert
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


# --- the rendered output ----------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_rendered_manifests_validate(directory: Path, version: str) -> None:
    # Prepare / Execute
    docs = render(directory)

    # Assert: valid, and no object rendered twice
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys))
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"fedpm"}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_every_container_runs_non_root_read_only_with_limits(directory: Path) -> None:
    docs = render(directory)
    templates = list(_pod_templates(docs))
    assert {name for name, _, _ in templates} >= {
        "fedpm-superlink",
        "fedpm-aggregator",
        "fedpm-serving",
        "fedpm-registry-http",
        "fedpm-fl-exporter",
    }
    for name, spec, _ in templates:
        _check_pod_security(name, spec)
    namespace = _one(docs, "Namespace", "fedpm")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_operator_tools_validate_and_follow_the_same_rules() -> None:
    # deploy/k8s/tools: pods an operator applies by hand (docs/deploy.md), not kustomized
    rendered = {(d["kind"], d["metadata"]["name"]) for d in render(BASE)}
    tools = sorted((K8S / "tools").glob("*.yaml"))
    assert tools
    for path in tools:
        for doc in yaml.safe_load_all(path.read_text()):
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
            assert doc["metadata"]["namespace"] == "fedpm"
            spec = doc["spec"]
            _check_pod_security(path.name, spec)
            assert _references(spec) <= rendered | set(_documented_objects()), path.name


def test_fedpm_images_carry_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for _, s, _ in _pod_templates(render(BASE)) for c in s["containers"]}
    fedpm = {i for i in images if i.startswith("ghcr.io/fedpm/")}
    assert fedpm == {f"ghcr.io/fedpm/aggregator:{version}", f"ghcr.io/fedpm/serving:{version}"}
    assert "flwr/superlink:1.42.0" in images  # the flwr the project pins (constraints.txt)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_aggregator_asks_for_a_gpu_tolerates_spot_and_resumes(directory: Path) -> None:
    docs = render(directory)
    job = _one(docs, "Job", "fedpm-aggregator")
    spec, container = _container(docs, "Job", "fedpm-aggregator")

    # a GPU, on a GPU node
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    gpu_terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for t in gpu_terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
    assert "nvidia.com/gpu.present" in keys
    assert "cloud.google.com/gke-accelerator" in keys
    # the spot taints of GKE, AKS and Karpenter tolerated
    tolerated = {(t["key"], t.get("value")) for t in spec["tolerations"]}
    assert tolerated >= SPOT_TAINTS
    # one pod at a time; preemption does not use up retries; a refused config fails at once
    assert job["spec"]["parallelism"] == 1
    assert job["spec"]["completions"] == 1
    assert spec["restartPolicy"] == "Never"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail
    assert fail[0]["onExitCodes"]["values"] == [2]
    assert fail[0]["onExitCodes"]["containerName"] == container["name"]
    # the checkpoints and the registry on the shared, writable claim
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    models = mounts["/srv/fedpm"]
    assert not models.get("readOnly", False)
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
    script = (SCRIPTS / "run-to-completion.sh").read_text()
    assert 'models="${FEDPM_MODELS_DIR:-/srv/fedpm}"' in script
    health = re.search(r"--health-server-address 0\.0\.0\.0:(\d+)", script)
    assert health is not None
    assert _port_number(container, "health") == int(health.group(1))
    assert container["command"] == ["bash", "/opt/fedpm/k8s/run-to-completion.sh"]
    # the run the Job drives: rendered, with a run name (the resume key) and the rounds
    run = _objects(docs, "ConfigMap")[container["envFrom"][0]["configMapRef"]["name"]]["data"]
    assert run["FEDPM_RUN_NAME"]
    assert int(run["FEDPM_RUN_ROUNDS"]) >= 1


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_superlink_keeps_state_on_a_claim_and_the_aggregator_reaches_it(directory: Path) -> None:
    docs = render(directory)
    deployment = _one(docs, "Deployment", "fedpm-superlink")
    spec, container = _container(docs, "Deployment", "fedpm-superlink")
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    flags = {a for a in container["args"] if "=" not in a}

    # one SuperLink on its database, never two at once; TLS with node authentication
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert {"--enable-supernode-auth"} <= flags
    assert "--insecure" not in flags
    assert args["isolation"] == "process"  # the aggregator Job runs the ServerApp
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    state_dir = str(Path(args["database"]).parent)
    assert "persistentVolumeClaim" in volumes[mounts[state_dir]]
    # the Service, the superexec address and the flwr CLI's connection agree on host and port
    port = int(args["port"])
    assert _port_number(container, "flower") == port
    service = _one(docs, "Service", "fedpm-superlink")
    service_port = next(p for p in service["spec"]["ports"] if p["targetPort"] == "flower")
    address = f"fedpm-superlink:{service_port['port']}"
    job_env = _env(_container(docs, "Job", "fedpm-aggregator")[1])
    assert job_env["FEDPM_SUPERLINK"] == address
    config = tomllib.loads((SCRIPTS / "flwr-config.toml").read_text())
    assert config["superlink"][config["superlink"]["default"]]["address"] == address
    health = int(args["health-server-address"].rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health
    public = _one(docs, "Service", "fedpm-superlink-public")
    assert public["spec"]["type"] == "LoadBalancer"
    assert public["spec"]["loadBalancerSourceRanges"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_serving_hpa_and_pdb_act_on_the_serving_pods(directory: Path) -> None:
    docs = render(directory)
    deployment = _one(docs, "Deployment", "fedpm-serving")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = _one(docs, "HorizontalPodAutoscaler", "fedpm-serving")
    pdb = _one(docs, "PodDisruptionBudget", "fedpm-serving")

    # the HPA scales that Deployment on CPU, from at least 2 replicas
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "fedpm-serving",
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # the PDB selects the serving pods and no other workload's
    selector = pdb["spec"]["selector"]["matchLabels"]
    selected = [name for name, _, pod in _pod_templates(docs) if _selects(selector, pod)]
    assert selected == ["fedpm-serving"]
    assert _selects(selector, labels)
    # a rollout never drops below the replicas there are
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_serving_state_stays_on_one_node_and_models_are_read_only(directory: Path) -> None:
    # The SQLite state (serving/state.py) is safe for several processes on one host only.
    docs = render(directory)
    spec, container = _container(docs, "Deployment", "fedpm-serving")
    env = _env(container)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    state = mounts[str(Path(env["FEDPM_SERVE_STATE_PATH"]).parent)]
    claim = volumes[state["name"]]["persistentVolumeClaim"]["claimName"]
    assert _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    affinity = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity[0]["topologyKey"] == "kubernetes.io/hostname"
    labels = _one(docs, "Deployment", "fedpm-serving")["spec"]["template"]["metadata"]["labels"]
    assert _selects(affinity[0]["labelSelector"]["matchLabels"], labels)
    registry = Path(env["FEDPM_SERVE_REGISTRY_DIR"])
    model_mount = mounts[str(registry.parent)]
    assert model_mount["readOnly"] is True
    assert volumes[model_mount["name"]]["persistentVolumeClaim"]["readOnly"] is True


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_referenced_objects_are_rendered_or_documented_for_the_operator(directory: Path) -> None:
    docs = render(directory)
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    documented = _documented_objects()
    referenced = set().union(*(_references(spec) for _, spec, _ in _pod_templates(docs)))

    missing = referenced - rendered
    assert {kind for kind, _ in missing} <= {"Secret", "ConfigMap"}  # no PVC left to the operator
    assert missing == set(documented)  # all documented, and nothing documented that is unused
    assert not rendered & set(documented)
    assert not [d for d in docs if d["kind"] == "Secret"]  # no secret value in the repository


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_every_file_a_container_is_given_is_in_what_is_mounted(directory: Path) -> None:
    docs = render(directory)
    checked = 0
    for name, spec, _ in _pod_templates(docs):
        for container in spec["containers"]:
            mounts = _mounted_files(docs, spec, container)
            words = [*container.get("command", []), *container.get("args", [])]
            words += [e["value"] for e in container.get("env", []) if "value" in e]
            for word in words:
                for path in re.findall(r"/[\w./-]+", word):
                    for mount, files in mounts.items():
                        if files is not None and path.startswith(mount + "/"):
                            assert path[len(mount) + 1 :] in files, f"{name}: {path}"
                            checked += 1
    assert checked >= 6  # TLS files, the SuperExec secret, the verify key, the script


def test_the_aggregator_script_uses_only_what_the_job_mounts() -> None:
    docs = render(BASE)
    spec, container = _container(docs, "Job", "fedpm-aggregator")
    mounts = _mounted_files(docs, spec, container)
    script = (SCRIPTS / "run-to-completion.sh").read_text()

    used = re.findall(r"\$etc/([\w-]+)/([\w.-]+)", script)
    assert len(used) >= 4
    for folder, file in used:
        files = mounts[f"/etc/fedpm/{folder}"]
        assert files is not None, folder
        assert file in files, f"$etc/{folder}/{file}"
    flwr_config = tomllib.loads((SCRIPTS / "flwr-config.toml").read_text())
    ca = flwr_config["superlink"]["fedpm"]["root-certificates"]
    assert Path(ca).name in (mounts[str(Path(ca).parent)] or set())
    env_keys = set(
        _objects(docs, "ConfigMap")[container["envFrom"][0]["configMapRef"]["name"]]["data"]
    )
    env_keys |= set(_env(container))
    needed = set(re.findall(r'"\$\{(\w+):\?\}"', script))
    assert needed
    assert needed <= env_keys


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_service_and_policy_ports_exist_on_the_pods_they_select(directory: Path) -> None:
    docs = render(directory)
    pods = list(_pod_templates(docs))
    for service in _objects(docs, "Service").values():
        chosen = [s for _, s, labels in pods if _selects(service["spec"]["selector"], labels)]
        assert chosen, f"Service {service['metadata']['name']} selects no pod"
        containers = [c for s in chosen for c in s["containers"]]
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert any(
                (p.get("name") == target) or (p["containerPort"] == target)
                for c in containers
                for p in c.get("ports", [])
            ), f"{service['metadata']['name']}: no container port {target!r}"
    for policy in _objects(docs, "NetworkPolicy").values():
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        chosen = [s for _, s, labels in pods if _selects(selector, labels)]
        assert chosen, f"NetworkPolicy {policy['metadata']['name']} selects no pod"
        names = {p.get("name") for s in chosen for c in s["containers"] for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert port["port"] in names, f"{policy['metadata']['name']}: {port['port']}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=K8S_IDS)
def test_exporter_probes_name_services_and_ports_that_exist(directory: Path) -> None:
    docs = render(directory)
    _, container = _container(docs, "Deployment", "fedpm-fl-exporter")
    probes = [a.split("=", 2)[2] for a in container["command"] if a.startswith("--probe=")]
    assert len(probes) == 2
    services = _objects(docs, "Service")
    for target in probes:
        host, port = target.rsplit(":", 1)
        assert host in services, target
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, target


def test_serving_probes_hit_routes_the_app_answers(tmp_path: Path) -> None:
    # Prepare: the probes as rendered, and the real app (no model in its registry yet)
    with warnings.catch_warnings():
        # Starlette deprecates plain httpx for its TestClient (as in tests/serving/conftest.py)
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import ServeSettings

    _spec, container = _container(render(BASE), "Deployment", "fedpm-serving")
    env = _env(container)
    assert _port_number(container, "http") == int(env["FEDPM_SERVE_PORT"])
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    for probe in probes.values():
        assert _port_number(container, probe["port"]) == int(env["FEDPM_SERVE_PORT"])
    settings = ServeSettings(registry_dir=tmp_path / "registry", state_path=tmp_path / "s.sqlite")

    # Execute
    with TestClient(create_app(settings)) as client:
        answers = {kind: client.get(probe["path"]).status_code for kind, probe in probes.items()}

    # Assert: alive without a model, not ready until one is loaded
    assert answers == {"startupProbe": 200, "readinessProbe": 503, "livenessProbe": 200}


# --- the aggregator's completion check and its driver -----------------------------------------


def _load_run_complete() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_complete", SCRIPTS / "run_complete.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(directory: Path, server_round: int, *, published: bool, skipped: bool = False) -> None:
    logs = {
        r: RoundLog(r, skip_reason="quorum" if skipped and r == server_round else "")
        for r in range(1, server_round + 1)
    }
    versions = {r: r for r in range(1, server_round + (1 if published else 0))}
    if skipped:
        versions.pop(server_round, None)
    ckpt = Checkpoint(
        server_round, {"w": np.arange(3.0)}, "cfg", round_logs=logs, registry_versions=versions
    )
    CheckpointStore(directory / "pilot-1", keep=5).save(ckpt)


@pytest.mark.parametrize(
    ("rounds_saved", "published", "skipped", "expected"),
    [
        (0, False, False, 1),  # nothing yet
        (2, True, False, 1),  # 2 of 3 rounds
        (3, False, False, 1),  # killed between the last checkpoint and its publication
        (3, True, False, 0),  # done
        (3, False, True, 0),  # done, the last round skipped (nothing to publish)
    ],
)
def test_run_complete_reads_the_checkpoints(
    tmp_path: Path, rounds_saved: int, published: bool, skipped: bool, expected: int
) -> None:
    # Prepare
    run_complete = _load_run_complete()
    if rounds_saved:
        _save(tmp_path, rounds_saved, published=published, skipped=skipped)
    argv = ["--checkpoint-dir", str(tmp_path), "--run-name", "pilot-1", "--rounds", "3"]

    # Execute / Assert
    assert run_complete.main(argv) == expected


def test_run_complete_skips_a_damaged_newest_checkpoint_and_writes_nothing(tmp_path: Path) -> None:
    # Prepare: round 3 published, then its file damaged; round 2 intact; a stale temporary
    run_complete = _load_run_complete()
    _save(tmp_path, 2, published=True)
    _save(tmp_path, 3, published=True)
    store = CheckpointStore(tmp_path / "pilot-1")
    store.path_for(3).write_bytes(store.path_for(3).read_bytes()[:-40])
    stale = store.directory / ".tmp-round-000004.npz.x"
    stale.write_bytes(b"partial")
    before = sorted(p.name for p in store.directory.iterdir())

    # Execute
    code = run_complete.main(
        ["--checkpoint-dir", str(tmp_path), "--run-name", "pilot-1", "--rounds", "3"]
    )

    # Assert: back at round 2, so not complete; the folder untouched
    assert code == 1
    assert sorted(p.name for p in store.directory.iterdir()) == before
    assert (
        run_complete.main(
            ["--checkpoint-dir", str(tmp_path), "--run-name", "../x", "--rounds", "3"]
        )
        == 2
    )


_STANDIN_SUPEREXEC = """#!/usr/bin/env bash
trap 'touch "$STANDIN_DIR/superexec.stopped"; exit 0' TERM
printf '%s\\n' "$@" > "$STANDIN_DIR/superexec.args"
if [ -n "${STANDIN_SUPEREXEC_EXIT:-}" ]; then sleep 0.3; exit "$STANDIN_SUPEREXEC_EXIT"; fi
while true; do sleep 0.05; done
"""

_STANDIN_FEDPM = """#!/usr/bin/env bash
trap 'touch "$STANDIN_DIR/fedpm.stopped"; exit 143' TERM
printf '%s\\n' "$@" > "$STANDIN_DIR/fedpm.args"
case "$STANDIN_FEDPM" in
  complete) touch "$STANDIN_DIR/complete"; exit 0 ;;
  partial) exit 0 ;;
  refuse) exit 2 ;;
  hang) while true; do sleep 0.05; done ;;
esac
"""

# the real check reads checkpoints (tested above); importing it costs torch's 3 s per call
_STANDIN_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$@" >> "$STANDIN_DIR/check.calls"
[ -e "$STANDIN_DIR/complete" ]
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _drive(tmp_path: Path, fedpm: str, *, already: bool = False, superexec_exit: str = "") -> int:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "flower-superexec", _STANDIN_SUPEREXEC)
    _executable(bin_dir / "fedpm", _STANDIN_FEDPM)
    _executable(bin_dir / "python", _STANDIN_PYTHON)
    etc = tmp_path / "etc"
    (etc / "flwr").mkdir(parents=True)
    (etc / "flwr" / "config.toml").write_text((SCRIPTS / "flwr-config.toml").read_text())
    if already:
        (tmp_path / "complete").touch()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STANDIN_DIR": str(tmp_path),
        "STANDIN_FEDPM": fedpm,
        "STANDIN_SUPEREXEC_EXIT": superexec_exit,
        "FEDPM_PYTHON": str(bin_dir / "python"),
        "FEDPM_MODELS_DIR": str(tmp_path / "models"),
        "FEDPM_ETC_DIR": str(etc),
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FEDPM_SUPERLINK": "fedpm-superlink:9093",
        "FEDPM_APP_DIR": "/opt/fedpm-app",
    }
    for line in (BASE / "training-run.env").read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    env["FEDPM_RUN_EXTRA_ARGS"] = "--local-epochs 2 --config seed=7"
    done = subprocess.run(
        ["bash", str(SCRIPTS / "run-to-completion.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode


def test_driver_exits_at_once_when_the_run_is_already_complete(tmp_path: Path) -> None:
    assert _drive(tmp_path, "hang", already=True) == 0
    assert not (tmp_path / "fedpm.args").exists()
    assert not (tmp_path / "superexec.args").exists()


def test_driver_runs_the_named_run_with_its_settings_until_complete(tmp_path: Path) -> None:
    # Execute
    code = _drive(tmp_path, "complete")

    # Assert: complete, both checks made, the SuperExec stopped afterwards
    assert code == 0
    assert (tmp_path / "check.calls").read_text().count("--run-name") == 2
    assert (tmp_path / "superexec.stopped").exists()
    superexec = (tmp_path / "superexec.args").read_text().splitlines()
    assert superexec[superexec.index("--runtime-api-address") + 1] == "fedpm-superlink:9093"
    assert "--superexec-auth-secret-file" in superexec
    fedpm = (tmp_path / "fedpm.args").read_text().splitlines()
    assert fedpm[:3] == ["fl", "run", "--federation"]
    run = dict(zip(fedpm[2::2], fedpm[3::2], strict=False))
    assert run["--run-name"] == "fedpm-1"
    assert run["--rounds"] == "30"
    assert run["--registry-dir"] == str(tmp_path / "models" / "registry")
    assert run["--checkpoint-dir"] == str(tmp_path / "models" / "checkpoints")
    assert fedpm[-4:] == ["--local-epochs", "2", "--config", "seed=7"]
    assert f"signing-key={tmp_path}/etc/model-signing/model-signing.key" in fedpm
    assert (tmp_path / "flwr-home" / "config.toml").is_file()


@pytest.mark.parametrize(
    ("fedpm", "superexec_exit", "expected"),
    [
        ("partial", "", 1),  # flwr run ended, rounds missing: a new pod resumes
        ("refuse", "", 2),  # configuration refused: the Job's podFailurePolicy fails the Job
        ("hang", "3", 1),  # the SuperExec died: stop the run, a new pod resumes
    ],
)
def test_driver_exit_codes_tell_the_job_what_to_do(
    tmp_path: Path, fedpm: str, superexec_exit: str, expected: int
) -> None:
    assert _drive(tmp_path, fedpm, superexec_exit=superexec_exit) == expected
    if superexec_exit:
        assert (tmp_path / "fedpm.stopped").exists()


@pytest.mark.integration
def test_run_complete_runs_as_a_script(tmp_path: Path) -> None:
    # the way the Job calls it: its own file, the image's interpreter, aggregator importable
    argv = ["--checkpoint-dir", str(tmp_path), "--run-name", "pilot-1", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "run_complete.py"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "no valid checkpoint" in done.stdout
