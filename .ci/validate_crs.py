"""Validates rendered custom resources against the real CRDs in ../shared/crds (their OpenAPI v3
schemas), unknown fields an error, as `kubectl apply`'s strict field validation treats them.

usage: validate_crs.py CRD_DIR RENDERED.yaml...   (exit 1 on any invalid object)
"""
import copy
import glob
import sys

import jsonschema
import yaml


CORE_GROUPS = {
    "", "apps", "batch", "policy", "autoscaling", "rbac.authorization.k8s.io", "networking.k8s.io",
    "coordination.k8s.io", "scheduling.k8s.io", "storage.k8s.io", "admissionregistration.k8s.io",
    "apiextensions.k8s.io", "discovery.k8s.io",
}


def strict(schema):
    """Unknown fields are errors wherever the schema lists properties (and does not preserve them)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def load_crds(root):
    schemas = {}
    for path in glob.glob(f"{root}/**/*.yaml", recursive=True):
        for doc in yaml.safe_load_all(open(path)):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for v in doc["spec"]["versions"]:
                schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
                # metadata is checked by the API server itself, not by the CRD schema.
                schema.get("properties", {}).pop("metadata", None)
                schemas.setdefault((f"{group}/{v['name']}", kind), strict(schema))
    return schemas


def main():
    schemas = load_crds(sys.argv[1])
    status = 0
    for path in sys.argv[2:]:
        for obj in yaml.safe_load_all(open(path)):
            if not obj:
                continue
            key = (obj.get("apiVersion"), obj.get("kind"))
            group = key[0].split("/")[0] if "/" in key[0] else ""
            if group in CORE_GROUPS:
                continue  # a built-in kind: kubernetes-validate checks it
            schema = schemas.get(key)
            if schema is None:
                print(f"FAIL {path}: no CRD in {sys.argv[1]} for {key[0]} {key[1]}")
                status = 1
                continue
            body = {k: v for k, v in obj.items() if k != "metadata"}
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
            name = obj.get("metadata", {}).get("name", "?")
            for e in errors:
                where = "/".join(str(p) for p in e.path)
                print(f"FAIL {path}: {key[1]} {name}: {where}: {e.message}")
                status = 1
            if not errors:
                print(f"ok   {key[1]} {name} ({key[0]}) valid against its CRD")
    return status


if __name__ == "__main__":
    sys.exit(main())
