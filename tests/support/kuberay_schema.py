"""Field names of KubeRay's RayCluster and RayJob (ray.io/v1), to check manifests without a cluster.

A trimmed copy of the CRDs' structure: the field names at each level, as in
ray-project/kuberay ray-operator/apis/ray/v1/raycluster_types.go and rayjob_types.go
(ray-operator/config/crd/bases/ray.io_rayclusters.yaml, ray.io_rayjobs.yaml), and the
Kubernetes core fields of the pod templates they embed. Parts of a pod spec that the
manifests here do not use (affinity, probes, volume sources) are accepted unchecked.
`kubectl apply --dry-run=server` against a cluster with the operator is the full check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fields:
    """A mapping whose keys must be among `known`; `required` keys must be present."""
    known: dict[str, Any]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListOf:
    item: Any


STRING_MAP = "map of strings"  # labels, annotations, rayStartParams, nodeSelector: any key, scalar values
QUANTITY_MAP = "map of quantities"  # requests/limits: cpu, memory, nvidia.com/gpu, ...
ANYTHING = "not checked"
SCALAR = "scalar"

OBJECT_META = Fields({name: SCALAR for name in ["name", "namespace", "generateName"]}
                     | {"labels": STRING_MAP, "annotations": STRING_MAP, "finalizers": ListOf(SCALAR)})
KEY_SELECTOR = Fields({"name": SCALAR, "key": SCALAR, "optional": SCALAR}, required=("key",))
ENV_VAR = Fields({"name": SCALAR, "value": SCALAR, "valueFrom": Fields({
    "secretKeyRef": KEY_SELECTOR, "configMapKeyRef": KEY_SELECTOR,
    "fieldRef": Fields({"apiVersion": SCALAR, "fieldPath": SCALAR}, required=("fieldPath",)),
    "resourceFieldRef": Fields({"containerName": SCALAR, "resource": SCALAR, "divisor": SCALAR}),
})}, required=("name",))
ENV_FROM = Fields({"prefix": SCALAR, "configMapRef": Fields({"name": SCALAR, "optional": SCALAR}),
                   "secretRef": Fields({"name": SCALAR, "optional": SCALAR})})
RESOURCES = Fields({"limits": QUANTITY_MAP, "requests": QUANTITY_MAP, "claims": ListOf(Fields({"name": SCALAR}))})
HANDLER = Fields({"exec": Fields({"command": ListOf(SCALAR)}), "httpGet": ANYTHING, "tcpSocket": ANYTHING,
                  "sleep": Fields({"seconds": SCALAR})})
CONTAINER = Fields({
    "name": SCALAR, "image": SCALAR, "imagePullPolicy": SCALAR, "command": ListOf(SCALAR), "args": ListOf(SCALAR),
    "workingDir": SCALAR, "env": ListOf(ENV_VAR), "envFrom": ListOf(ENV_FROM), "resources": RESOURCES,
    "ports": ListOf(Fields({"containerPort": SCALAR, "name": SCALAR, "protocol": SCALAR, "hostPort": SCALAR,
                            "hostIP": SCALAR}, required=("containerPort",))),
    "volumeMounts": ListOf(Fields({"name": SCALAR, "mountPath": SCALAR, "readOnly": SCALAR, "subPath": SCALAR,
                                   "subPathExpr": SCALAR, "mountPropagation": SCALAR},
                                  required=("name", "mountPath"))),
    "lifecycle": Fields({"postStart": HANDLER, "preStop": HANDLER}),
    "livenessProbe": ANYTHING, "readinessProbe": ANYTHING, "startupProbe": ANYTHING,
    "securityContext": ANYTHING, "stdin": SCALAR, "tty": SCALAR,
    "terminationMessagePath": SCALAR, "terminationMessagePolicy": SCALAR,
}, required=("name",))
POD_SPEC = Fields({
    "containers": ListOf(CONTAINER), "initContainers": ListOf(CONTAINER),
    "volumes": ListOf(Fields({"name": SCALAR, "emptyDir": Fields({"medium": SCALAR, "sizeLimit": SCALAR}),
                              "secret": ANYTHING, "configMap": ANYTHING, "persistentVolumeClaim": ANYTHING,
                              "csi": ANYTHING, "hostPath": ANYTHING, "ephemeral": ANYTHING}, required=("name",))),
    "nodeSelector": STRING_MAP,
    "tolerations": ListOf(Fields({"key": SCALAR, "operator": SCALAR, "value": SCALAR, "effect": SCALAR,
                                  "tolerationSeconds": SCALAR})),
    "affinity": ANYTHING, "topologySpreadConstraints": ANYTHING, "securityContext": ANYTHING,
    "serviceAccountName": SCALAR, "automountServiceAccountToken": SCALAR, "restartPolicy": SCALAR,
    "terminationGracePeriodSeconds": SCALAR, "activeDeadlineSeconds": SCALAR, "priorityClassName": SCALAR,
    "schedulerName": SCALAR, "runtimeClassName": SCALAR, "hostNetwork": SCALAR, "dnsPolicy": SCALAR,
    "imagePullSecrets": ListOf(Fields({"name": SCALAR})),
}, required=("containers",))
POD_TEMPLATE = Fields({"metadata": OBJECT_META, "spec": POD_SPEC})

# raycluster_types.go
HEAD_GROUP = Fields({"template": POD_TEMPLATE, "headService": ANYTHING, "enableIngress": SCALAR,
                     "rayStartParams": STRING_MAP, "serviceType": SCALAR}, required=("template",))
WORKER_GROUP = Fields({"suspend": SCALAR, "groupName": SCALAR, "replicas": SCALAR, "minReplicas": SCALAR,
                       "maxReplicas": SCALAR, "idleTimeoutSeconds": SCALAR, "rayStartParams": STRING_MAP,
                       "template": POD_TEMPLATE, "scaleStrategy": Fields({"workersToDelete": ListOf(SCALAR)}),
                       "numOfHosts": SCALAR}, required=("groupName", "template"))
AUTOSCALER_OPTIONS = Fields({"resources": RESOURCES, "image": SCALAR, "imagePullPolicy": SCALAR,
                             "securityContext": ANYTHING, "idleTimeoutSeconds": SCALAR, "upscalingMode": SCALAR,
                             "env": ListOf(ENV_VAR), "envFrom": ListOf(ENV_FROM), "volumeMounts": ANYTHING})
# AuthOptions (KubeRay 1.6): Ray's token auth, with the token from a Secret KubeRay makes or one named here.
AUTH_OPTIONS = Fields({"mode": SCALAR, "secretName": SCALAR, "enableK8sTokenAuth": SCALAR})
RAY_CLUSTER_SPEC = Fields({
    "suspend": SCALAR, "managedBy": SCALAR, "autoscalerOptions": AUTOSCALER_OPTIONS, "authOptions": AUTH_OPTIONS,
    "headServiceAnnotations": STRING_MAP, "enableInTreeAutoscaling": SCALAR, "gcsFaultToleranceOptions": ANYTHING,
    "headGroupSpec": HEAD_GROUP, "rayVersion": SCALAR, "workerGroupSpecs": ListOf(WORKER_GROUP),
}, required=("headGroupSpec",))
# rayjob_types.go
RAY_JOB_SPEC = Fields({
    "activeDeadlineSeconds": SCALAR, "backoffLimit": SCALAR, "rayClusterSpec": RAY_CLUSTER_SPEC,
    "submitterPodTemplate": POD_TEMPLATE, "metadata": STRING_MAP, "clusterSelector": STRING_MAP,
    "submitterConfig": Fields({"backoffLimit": SCALAR}), "managedBy": SCALAR, "deletionPolicy": SCALAR,
    "entrypoint": SCALAR, "runtimeEnvYAML": SCALAR, "jobId": SCALAR, "submissionMode": SCALAR,
    "entrypointResources": SCALAR, "entrypointNumCpus": SCALAR, "entrypointNumGpus": SCALAR,
    "ttlSecondsAfterFinished": SCALAR, "shutdownAfterJobFinishes": SCALAR, "suspend": SCALAR,
})


def _resource(spec: Fields) -> Fields:
    return Fields({"apiVersion": SCALAR, "kind": SCALAR, "metadata": OBJECT_META, "spec": spec},
                  required=("apiVersion", "kind", "metadata", "spec"))


SCHEMAS = {
    ("ray.io/v1", "RayCluster"): _resource(RAY_CLUSTER_SPEC),
    ("ray.io/v1", "RayJob"): _resource(RAY_JOB_SPEC),
    ("v1", "ServiceAccount"): Fields({"apiVersion": SCALAR, "kind": SCALAR, "metadata": OBJECT_META,
                                      "automountServiceAccountToken": SCALAR,
                                      "imagePullSecrets": ListOf(Fields({"name": SCALAR}))},
                                     required=("apiVersion", "kind", "metadata")),
}


def problems(manifest: Any) -> list[str]:
    """What is wrong with one Kubernetes object: unknown or missing fields, wrong shapes (empty if fine)."""
    if not isinstance(manifest, dict):
        return [f"a manifest must be a mapping, got {type(manifest).__name__}"]
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    if key not in SCHEMAS:
        return [f"no schema for apiVersion {key[0]!r}, kind {key[1]!r} (known: {sorted(SCHEMAS)})"]
    found: list[str] = []
    _check(manifest, SCHEMAS[key], key[1], found)
    return found


def _check(value: Any, schema: Any, path: str, found: list[str]) -> None:
    if schema == ANYTHING:
        return
    if schema == SCALAR:
        if isinstance(value, (dict, list)):
            found.append(f"{path}: expected a single value, got a {type(value).__name__}")
        return
    if schema in (STRING_MAP, QUANTITY_MAP):
        if not isinstance(value, dict):
            found.append(f"{path}: expected a {schema}, got {type(value).__name__}")
        else:
            found.extend(f"{path}.{name}: expected a single value" for name, item in value.items()
                         if isinstance(item, (dict, list)))
        return
    if isinstance(schema, ListOf):
        if not isinstance(value, list):
            found.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for position, item in enumerate(value):
            _check(item, schema.item, f"{path}[{position}]", found)
        return
    if not isinstance(value, dict):
        found.append(f"{path}: expected a mapping, got {type(value).__name__}")
        return
    for name in schema.required:
        if name not in value:
            found.append(f"{path}: missing required field {name!r}")
    for name, item in value.items():
        if name not in schema.known:
            found.append(f"{path}.{name}: unknown field (known here: {', '.join(sorted(schema.known))})")
        else:
            _check(item, schema.known[name], f"{path}.{name}", found)
