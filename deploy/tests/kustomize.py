"""Render a kustomization: with the real kustomize when one is installed, else in Python.

The Python builder implements exactly the kustomize features ``deploy/k8s`` uses (resources,
components, namespace, images, config map and secret generators, strategic-merge patches,
replacements between fields of named objects) and refuses any other field, so it can never
silently ignore part of a kustomization. When a real kustomize is available, ``test_k8s.py``
checks that both produce the same objects.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

SUPPORTED_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "components",
        "namespace",
        "images",
        "configMapGenerator",
        "secretGenerator",
        "patches",
        "replacements",
    }
)

# Kinds that live outside namespaces (the namespace transformer leaves them alone).
CLUSTER_SCOPED = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "StorageClass"}
)

# Strategic-merge list keys for the fields our patches touch (Kubernetes' patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}

GENERATED_SUFFIX = re.compile(r"^(?P<base>.+)-[a-z0-9]{10}$")


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature the Python builder does not implement."""


@dataclass
class Build:
    """Rendered objects, plus the names of the ConfigMaps and Secrets that were generated."""

    objects: list[Manifest]
    generated: set[tuple[str, str]] = field(default_factory=set)


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document in a file."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def kustomize_command() -> list[str] | None:
    """How to run a real kustomize here: the binary (PATH or ~/go/bin), or kubectl's built-in.

    ``SCOREBOARD_KUSTOMIZE=python`` forces the Python builder (to test the path CI takes on a
    machine without either tool).
    """
    if os.environ.get("SCOREBOARD_KUSTOMIZE") == "python":
        return None
    found = shutil.which("kustomize")
    if found:
        return [found, "build"]
    go_bin = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / "kustomize"
    if go_bin.is_file() and os.access(go_bin, os.X_OK):
        return [str(go_bin), "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        probe = subprocess.run(
            [kubectl, "kustomize", "--help"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [kubectl, "kustomize"]
    return None


def build_with_tool(command: list[str], directory: Path) -> list[Manifest]:
    """Run the real kustomize on ``directory``."""
    result = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def _load_spec(directory: Path, kind: str) -> Manifest:
    spec: Manifest = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedKustomization(
            f"{directory}: the Python builder does not implement {sorted(unknown)}"
        )
    if spec.get("kind", "Kustomization") != kind:
        raise UnsupportedKustomization(f"{directory}: expected a {kind}, found {spec['kind']}")
    return spec


def _add_resources(build: Build, directory: Path, spec: Manifest) -> None:
    for entry in spec.get("resources", []):
        target = directory / entry
        if target.is_dir():
            sub = build_fallback(target)
            build.objects.extend(sub.objects)
            build.generated |= sub.generated
        else:
            build.objects.extend(load_documents(target))


def build_fallback(directory: Path) -> Build:
    """Render ``directory``'s kustomization.yaml the way kustomize does, minus name hashes."""
    spec = _load_spec(directory, "Kustomization")
    build = Build(objects=[])
    _add_resources(build, directory, spec)
    # A Component adds its resources to the parent's, and its generators and patches act on
    # everything accumulated so far (before the parent's own generators and transformers).
    for entry in spec.get("components", []):
        component_dir = directory / entry
        component = _load_spec(component_dir, "Component")
        if {"namespace", "images", "components"} & set(component):
            raise UnsupportedKustomization(f"{component_dir}: only resources, generators, patches")
        _add_resources(build, component_dir, component)
        _generate_and_patch(build, component_dir, component)
    _generate_and_patch(build, directory, spec)

    namespace = spec.get("namespace")
    if namespace:
        for obj in build.objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace

    for image in spec.get("images", []):
        for obj in build.objects:
            _set_image(obj, image)
    # kustomize runs replacements after its other transformers (so they see the final image).
    for replacement in spec.get("replacements", []):
        _replace(build.objects, replacement)
    return build


def _only(entry: Manifest, allowed: set[str], what: str) -> None:
    if set(entry) - allowed:
        raise UnsupportedKustomization(f"{what} fields {sorted(set(entry) - allowed)}")


def _one(objects: list[Manifest], select: Manifest) -> Manifest:
    hits = [
        o
        for o in objects
        if o["kind"] == select["kind"] and o["metadata"]["name"] == select["name"]
    ]
    if len(hits) != 1:
        raise UnsupportedKustomization(f"replacement {select} matches {len(hits)} objects")
    return hits[0]


def _path(obj: Manifest, field_path: str) -> tuple[Any, str | int]:
    """The parent node and key of a kustomize field path (``a.b.[name=x].c``)."""
    parts = field_path.split(".")
    node: Any = obj
    for part in parts[:-1]:
        match = re.fullmatch(r"\[(?P<key>[^=\]]+)=(?P<value>[^\]]*)\]", part)
        if match:
            items = [i for i in node if str(i.get(match["key"])) == match["value"]]
            if len(items) != 1:
                raise UnsupportedKustomization(f"field path {field_path}: {part} is not one item")
            node = items[0]
        else:
            node = node[part]
    last = parts[-1]
    if last.startswith("["):
        raise UnsupportedKustomization(f"field path {field_path} ends in a selector")
    return node, last


def _replace(objects: list[Manifest], replacement: Manifest) -> None:
    """A replacement: a source field's value (or one delimited part of it) into target fields."""
    _only(replacement, {"source", "targets"}, "replacement")
    source = replacement["source"]
    _only(source, {"kind", "name", "fieldPath", "options"}, "replacement source")
    parent, key = _path(_one(objects, source), source["fieldPath"])
    value = str(parent[key])
    options = source.get("options", {})
    _only(options, {"delimiter", "index"}, "replacement source options")
    if "delimiter" in options:
        value = value.split(options["delimiter"])[options.get("index", 0)]
    for target in replacement["targets"]:
        _only(target, {"select", "fieldPaths", "options"}, "replacement target")
        _only(target["select"], {"kind", "name"}, "replacement select")
        obj = _one(objects, target["select"])
        target_options = target.get("options", {})
        _only(target_options, {"delimiter", "index"}, "replacement target options")
        for field_path in target["fieldPaths"]:
            node, name = _path(obj, field_path)
            if "delimiter" in target_options:
                pieces = str(node[name]).split(target_options["delimiter"])
                index = target_options.get("index", 0)
                if index >= len(pieces):  # as kustomize: past the end appends, below 0 prepends
                    pieces.append(value)
                elif index < 0:
                    pieces.insert(0, value)
                else:
                    pieces[index] = value
                node[name] = target_options["delimiter"].join(pieces)
            else:
                node[name] = value


def _generate_and_patch(build: Build, directory: Path, spec: Manifest) -> None:
    for generator in spec.get("configMapGenerator", []):
        _generate(build, "ConfigMap", generator, secret=False, directory=directory)
    for generator in spec.get("secretGenerator", []):
        _generate(build, "Secret", generator, secret=True, directory=directory)

    for patch in spec.get("patches", []):
        _apply_patch_entry(build.objects, directory, patch)


def _parse_literal(literal: str) -> tuple[str, str]:
    key, sep, value = literal.partition("=")
    if not sep:
        raise UnsupportedKustomization(f"generator literal without '=': {literal!r}")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key, value


def _generate(
    build: Build, kind: str, generator: Manifest, *, secret: bool, directory: Path
) -> None:
    allowed = {"name", "literals", "files", "behavior", "type"}
    if set(generator) - allowed:
        raise UnsupportedKustomization(
            f"{kind} generator fields {sorted(set(generator) - allowed)}"
        )
    name = generator["name"]
    data = dict(_parse_literal(item) for item in generator.get("literals", []))
    for item in generator.get("files", []):  # `path` or `key=path`, relative to the directory
        key, sep, path = item.partition("=")
        if not sep:
            key, path = Path(item).name, item
        data[key] = (directory / path).read_text()
    if secret:
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    behavior = generator.get("behavior", "create")
    existing = [o for o in build.objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if behavior == "create":
        if existing:
            raise UnsupportedKustomization(f"{kind} {name} generated twice")
        obj: Manifest = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
        if secret:
            obj["type"] = generator.get("type", "Opaque")
        obj["data"] = data
        build.objects.append(obj)
        build.generated.add((kind, name))
    elif behavior in ("merge", "replace"):
        if len(existing) != 1 or (kind, name) not in build.generated:
            raise UnsupportedKustomization(f"{behavior} needs one generated {kind} {name}")
        target = existing[0]
        target["data"] = {**target.get("data", {}), **data} if behavior == "merge" else data
    else:
        raise UnsupportedKustomization(f"generator behavior {behavior!r}")


def _apply_patch_entry(objects: list[Manifest], directory: Path, entry: Manifest) -> None:
    if set(entry) != {"path"}:
        raise UnsupportedKustomization(f"patch entry {entry}: only `path:` is implemented")
    for patch in load_documents(directory / entry["path"]):
        kind = patch["kind"]
        name = patch["metadata"]["name"]
        matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        if len(matches) != 1:
            raise UnsupportedKustomization(f"patch {kind}/{name} matches {len(matches)} objects")
        merged = strategic_merge(matches[0], patch)
        matches[0].clear()
        matches[0].update(merged)


def strategic_merge(original: Any, patch: Any, field_name: str = "") -> Any:
    """A strategic-merge patch: maps merge, keyed lists merge by key, other lists replace."""
    if isinstance(original, dict) and isinstance(patch, dict):
        result = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            elif key in result:
                result[key] = strategic_merge(result[key], value, key)
            else:
                result[key] = copy.deepcopy(value)
        return result
    merge_key = MERGE_KEYS.get(field_name)
    if isinstance(original, list) and isinstance(patch, list) and merge_key:
        result_list = copy.deepcopy(original)
        for item in patch:
            index = next(
                (i for i, old in enumerate(result_list) if old.get(merge_key) == item[merge_key]),
                None,
            )
            if index is None:
                # kustomize puts patch-only entries first, then the original order.
                result_list.insert(0, copy.deepcopy(item))
            else:
                result_list[index] = strategic_merge(result_list[index], item, field_name)
        return result_list
    return copy.deepcopy(patch)


def _set_image(obj: Manifest, image: Manifest) -> None:
    name = image["name"]
    pattern = re.compile(rf"^{re.escape(name)}(?P<rest>[:@].*)?$")

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        match = pattern.match(container.get("image", ""))
                        if match:
                            new = str(image.get("newName", name))
                            if "digest" in image:
                                new += "@" + image["digest"]
                            elif "newTag" in image:
                                new += f":{image['newTag']}"
                            elif match.group("rest"):
                                new += match.group("rest")
                            container["image"] = new
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(obj)


def strip_generated_hashes(objects: list[Manifest], generated: set[tuple[str, str]]) -> None:
    """Rename ``name-<hash>`` back to ``name`` for generated objects and every reference to them.

    Lets a real kustomize's output be compared with the Python builder's (which adds no hash).
    """
    renames: dict[str, str] = {}
    for obj in objects:
        match = GENERATED_SUFFIX.match(obj["metadata"]["name"])
        if match and (obj["kind"], match.group("base")) in generated:
            renames[obj["metadata"]["name"]] = match.group("base")
    for i, obj in enumerate(objects):
        text = json.dumps(obj)
        for hashed, plain in renames.items():
            text = text.replace(f'"{hashed}"', f'"{plain}"')
        objects[i] = json.loads(text)


def index(objects: list[Manifest]) -> dict[tuple[str, str, str], Manifest]:
    """Objects by (kind, namespace, name), failing on duplicates."""
    result: dict[tuple[str, str, str], Manifest] = {}
    for obj in objects:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        if key in result:
            raise ValueError(f"duplicate object {key}")
        result[key] = obj
    return result
