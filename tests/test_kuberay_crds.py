"""Every KubeRay manifest in cluster/ against the CRD schemas of the KubeRay version cluster/README.md
names (tests/data/kuberay/<version>/), as strictly as `kubectl apply --validate=strict`: unknown and
duplicate fields are errors, so a field of the wrong resource kind cannot pass. No Ray is started."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import REPO

CLUSTER = REPO / "cluster"
DATA = Path(__file__).parent / "data" / "kuberay"
RAYSERVICE = CLUSTER / "kuberay" / "rayservice-face-api.yaml"

# The operator's own name rule (ray-operator/controllers/ray/utils/validation.go, constant.go): a DNS-1035
# label short enough for the names it derives from it.
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47, "RayService": 47, "RayCronJob": 36}


def object_meta(kind: str) -> dict:
    """The root metadata a manifest here may set (the apiserver checks it itself; the CRD says only
    `type: object`)."""
    return {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": MAX_NAME_LENGTH[kind]},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


def kuberay_version() -> str:
    match = re.search(r"KubeRay (v\d+\.\d+\.\d+)", (CLUSTER / "README.md").read_text())
    assert match, "cluster/README.md names no KubeRay version (`KubeRay vX.Y.Z`)"
    return match.group(1)


class StrictLoader(yaml.SafeLoader):
    """YAML with duplicate keys refused, as kubectl's strict decoding does."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
        if duplicates:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {duplicates}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def to_json_schema(node):
    """A Kubernetes structural schema (OpenAPI v3 subset) as JSON Schema: an object without
    x-kubernetes-preserve-unknown-fields takes no field its schema does not name, `nullable` allows
    null, x-kubernetes-int-or-string takes either. CEL rules (x-kubernetes-validations) are not run."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in {"properties", "patternProperties"}:
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in {"items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"}:
            out[key] = to_json_schema(value)
        elif not key.startswith("x-kubernetes-") and key not in {"nullable", "default", "description"}:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (node.get("type") == "object" and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    group, _, version = api_version.partition("/")
    path = DATA / kuberay_version() / f"{group}_{kind.lower()}s.{version}.json"
    assert path.is_file(), f"KubeRay {kuberay_version()} has no CRD for {api_version} {kind} ({path})"
    schema = json.loads(path.read_text())
    schema["properties"]["metadata"] = object_meta(kind)
    schema = to_json_schema(schema)
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def crd_errors(manifest: dict) -> list[str]:
    """Every way `manifest` breaks its CRD, each as `path: problem`; empty when Kubernetes accepts it."""
    validator = crd_validator(manifest["apiVersion"], manifest["kind"])
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def kuberay_manifests() -> list[tuple[str, dict]]:
    """(file#document, manifest) for every document with a ray.io apiVersion in any YAML under cluster/."""
    found = []
    for path in sorted(CLUSTER.rglob("*.y*ml")):
        for index, doc in enumerate(yaml.load_all(path.read_text(), Loader=StrictLoader)):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("ray.io/"):
                found.append((f"{path.relative_to(CLUSTER)}#{index}", doc))
    return found


MANIFESTS = kuberay_manifests()


def test_the_schemas_of_the_named_kuberay_version_are_here():
    assert (DATA / kuberay_version() / "README.md").is_file()
    assert {kind for _, m in MANIFESTS for kind in [m["kind"]]} == {"RayCluster", "RayJob", "RayService", "RayCronJob"}


@pytest.mark.parametrize("manifest", [m for _, m in MANIFESTS], ids=[name for name, _ in MANIFESTS])
def test_kuberay_manifest_matches_its_crd(manifest):
    assert crd_errors(manifest) == []


def test_a_rayservice_with_the_rayjob_cluster_field_is_rejected():
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    manifest["spec"]["rayClusterSpec"] = manifest["spec"].pop("rayClusterConfig")
    errors = crd_errors(manifest)
    assert any(e.startswith("spec:") and "'rayClusterConfig' is a required property" in e for e in errors)
    assert any(e.startswith("spec:") and "'rayClusterSpec' was unexpected" in e for e in errors)


def test_unknown_fields_wrong_types_and_duplicate_keys_are_rejected():
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    bad = copy.deepcopy(manifest)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert crd_errors(bad) == ["spec.rayClusterConfig.workerGroupSpecs.0: Additional properties are not allowed "
                               "('maxReplica' was unexpected)"]
    bad = copy.deepcopy(manifest)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "1"
    assert [e.split(":")[0] for e in crd_errors(bad)] == ["spec.rayClusterConfig.workerGroupSpecs.0.replicas"]
    bad = copy.deepcopy(manifest)
    for name in ["face-api-", "1-face-api", "f" * 48]:
        bad["metadata"]["name"] = name
        assert [e.split(":")[0] for e in crd_errors(bad)] == ["metadata.name"], name
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate keys"):
        yaml.load("spec:\n  suspend: true\n  suspend: false\n", Loader=StrictLoader)


def test_quantities_take_an_integer_or_a_string():
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    limits = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"]["limits"]
    limits["nvidia.com/gpu"] = 1
    assert crd_errors(manifest) == []
    limits["nvidia.com/gpu"] = [1]
    assert crd_errors(manifest)
