"""Trim a CRD's openAPIV3Schema to the fields kfopt's manifests use, as a strict JSON schema (Draft 7).

How tests/schemas/trainer-clustertrainingruntime-v1alpha1.json was made (a manual step when the pinned
Trainer version changes, not part of the test run):

    git -C trainer show v2.3.0:manifests/base/crds/trainer.kubeflow.org_clustertrainingruntimes.yaml \\
        > ctr.yaml && python tests/schemas/trim_crd.py ctr.yaml > tests/schemas/trainer-clustertrainingruntime-v1alpha1.json

Names, types, bounds, enums and required lists are the CRD's; descriptions, defaults and x-kubernetes-*
keys are dropped, and every object gets additionalProperties: false, so that a misspelt key fails the
test instead of being pruned silently by the API server.
"""

import json
import sys

import yaml

SOURCE = "kubeflow/trainer manifests/base/crds/trainer.kubeflow.org_clustertrainingruntimes.yaml"
#: The kept tree: a dict keeps those properties (recursively), True keeps a property with all its subtree.
POD = {"restartPolicy": True, "securityContext": True,
       "containers": {"name": True, "image": True, "ports": True, "securityContext": True,
                      "env": {"name": True, "value": True, "valueFrom": {"fieldRef": True}}}}
KEEP = {"spec": {
    "mlPolicy": {"numNodes": True},
    "template": {"spec": {
        "network": True,
        "replicatedJobs": {"name": True, "template": {
            "metadata": {"labels": True},
            "spec": {"backoffLimit": True, "template": {"spec": POD}}}}}}}}
DROP = ("description", "default")


def strip(node):
    """The schema without documentation and Kubernetes extensions, closed for unknown keys."""
    if isinstance(node, list):
        return [strip(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strip(v) for k, v in node.items() if k not in DROP and not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def trim(node: dict, keep) -> dict:
    if keep is True:
        return strip(node)
    if node.get("type") == "array":
        return {**strip({k: v for k, v in node.items() if k != "items"}), "items": trim(node["items"], keep)}
    props = node["properties"]
    out = strip({k: v for k, v in node.items() if k != "properties"})
    out["properties"] = {name: trim(props[name], sub) for name, sub in keep.items()}
    out["additionalProperties"] = False
    if "required" in out:
        out["required"] = [r for r in out["required"] if r in keep]
    return out


def main(path: str) -> None:
    crd = yaml.safe_load(open(path))
    version = crd["spec"]["versions"][0]
    kind, group = crd["spec"]["names"]["kind"], crd["spec"]["group"]
    body = trim(version["schema"]["openAPIV3Schema"], KEEP)["properties"]
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"Kubeflow Trainer {kind} ({group}/{version['name']}), generated for kfopt by "
                    f"tests/schemas/trim_crd.py from the openAPIV3Schema of {SOURCE} at commit 8c0f5059 "
                    "(VERSION v2.3.0, August 2026), trimmed to the fields kfopt's runtime uses.",
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": f"{group}/{version['name']}"}, "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "spec": body["spec"]}}
    json.dump(schema, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
