"""Write the CRD schemas kubeconform validates the chart's custom resources against.

No registry package ships them, so they are written here: openAPI v3 (CRD `openAPIV3Schema` style,
JSON-schema draft 4 keywords only, which is kubeconform's default draft) for the fields of
KEDA 2.x (keda.sh/v1alpha1 ScaledObject, TriggerAuthentication) and Prometheus Operator
(monitoring.coreos.com/v1 ServiceMonitor, PrometheusRule), following the upstream CRDs. Objects are
closed (additionalProperties: false) like the API server's strict field validation, so a misspelt
field fails kubeconform. Layout: <group>/<kind>_<version>.json, i.e. the kubeconform template
    deploy/helm/schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json

    python3 deploy/helm/schemas/generate.py      # rewrites the JSON files next to this script
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STRMAP = {"type": "object", "additionalProperties": STR}
INT_OR_STR = {"anyOf": [INT, STR]}


def obj(props: dict, required: list[str] | None = None, open_: bool = False) -> dict:
    out = {"type": "object", "properties": props, "additionalProperties": open_}
    if required:
        out["required"] = required
    return out


def arr(items: dict) -> dict:
    return {"type": "array", "items": items}


METADATA = obj({
    "name": STR, "namespace": STR, "generateName": STR, "labels": STRMAP, "annotations": STRMAP,
    "finalizers": arr(STR), "ownerReferences": arr({"type": "object"}),
}, open_=True)  # the rest of ObjectMeta is the API server's


def resource(api_version: str, kind: str, spec: dict, spec_required: bool = True) -> dict:
    return obj({
        "apiVersion": {"type": "string", "enum": [api_version]},
        "kind": {"type": "string", "enum": [kind]},
        "metadata": METADATA,
        "spec": spec,
        "status": {"type": "object"},
    }, required=["apiVersion", "kind", "metadata"] + (["spec"] if spec_required else []))


# --- KEDA --------------------------------------------------------------------------------------
HPA_RULES = obj({
    "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
    "selectPolicy": {"type": "string", "enum": ["Max", "Min", "Disabled"]},
    "policies": arr(obj({"type": {"type": "string", "enum": ["Pods", "Percent"]},
                         "value": {"type": "integer", "minimum": 1},
                         "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}},
                        required=["type", "value", "periodSeconds"])),
    "tolerance": INT_OR_STR,
})
HPA_BEHAVIOR = obj({"scaleUp": HPA_RULES, "scaleDown": HPA_RULES})

SCALED_OBJECT = resource("keda.sh/v1alpha1", "ScaledObject", obj({
    "scaleTargetRef": obj({"apiVersion": STR, "kind": STR, "name": STR, "envSourceContainerName": STR}, required=["name"]),
    "pollingInterval": INT,
    "cooldownPeriod": INT,
    "initialCooldownPeriod": INT,
    "idleReplicaCount": INT,
    "minReplicaCount": INT,
    "maxReplicaCount": INT,
    "fallback": obj({"failureThreshold": INT, "replicas": INT,
                     "behavior": {"type": "string", "enum": ["static", "currentReplicas",
                                                             "currentReplicasIfHigher", "currentReplicasIfLower"]}},
                    required=["failureThreshold", "replicas"]),
    "advanced": obj({
        "restoreToOriginalReplicaCount": BOOL,
        "horizontalPodAutoscalerConfig": obj({"name": STR, "behavior": HPA_BEHAVIOR}),
        "scalingModifiers": obj({"formula": STR, "target": STR, "activationTarget": STR, "metricType": STR}),
    }),
    "triggers": {"type": "array", "minItems": 1, "items": obj({
        "type": STR,
        "name": STR,
        "metadata": STRMAP,
        "authenticationRef": obj({"name": STR, "kind": {"type": "string", "enum": [
            "TriggerAuthentication", "ClusterTriggerAuthentication"]}}, required=["name"]),
        "metricType": {"type": "string", "enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": BOOL,
    }, required=["type", "metadata"])},
}, required=["scaleTargetRef", "triggers"]))

TRIGGER_AUTHENTICATION = resource("keda.sh/v1alpha1", "TriggerAuthentication", obj({
    "secretTargetRef": arr(obj({"parameter": STR, "name": STR, "key": STR}, required=["parameter", "name", "key"])),
    "configMapTargetRef": arr(obj({"parameter": STR, "name": STR, "key": STR}, required=["parameter", "name", "key"])),
    "env": arr(obj({"parameter": STR, "name": STR, "containerName": STR}, required=["parameter", "name"])),
    "podIdentity": obj({"provider": STR, "identityId": STR, "identityOwner": STR, "roleArn": STR,
                        "identityTenantId": STR, "identityAuthorityHost": STR}, required=["provider"]),
    "boundServiceAccountToken": arr(obj({"parameter": STR, "serviceAccountName": STR},
                                        required=["parameter", "serviceAccountName"])),
    # secret-store integrations: accepted as they are
    "hashiCorpVault": {"type": "object"},
    "azureKeyVault": {"type": "object"},
    "gcpSecretManager": {"type": "object"},
    "awsSecretManager": {"type": "object"},
}))

# --- Prometheus Operator -----------------------------------------------------------------------
RELABEL = obj({
    "sourceLabels": arr(STR), "separator": STR, "targetLabel": STR, "regex": STR, "modulus": INT,
    "replacement": STR,
    "action": {"type": "string", "enum": [
        "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap",
        "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase",
        "keepequal", "KeepEqual", "dropequal", "DropEqual"]},
})
LABEL_SELECTOR = obj({
    "matchLabels": STRMAP,
    "matchExpressions": arr(obj({"key": STR, "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                 "values": arr(STR)}, required=["key", "operator"])),
})
DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
ENDPOINT = obj({
    "port": STR, "targetPort": INT_OR_STR, "path": STR, "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]},
    "params": {"type": "object", "additionalProperties": arr(STR)},
    "interval": DURATION, "scrapeTimeout": DURATION,
    "honorLabels": BOOL, "honorTimestamps": BOOL, "trackTimestampsStaleness": BOOL,
    "relabelings": arr(RELABEL), "metricRelabelings": arr(RELABEL),
    "followRedirects": BOOL, "enableHttp2": BOOL, "filterRunning": BOOL, "proxyUrl": STR,
    # auth and TLS settings: accepted as they are
    "tlsConfig": {"type": "object"}, "bearerTokenFile": STR, "bearerTokenSecret": {"type": "object"},
    "authorization": {"type": "object"}, "basicAuth": {"type": "object"}, "oauth2": {"type": "object"},
})
SERVICE_MONITOR = resource("monitoring.coreos.com/v1", "ServiceMonitor", obj({
    "jobLabel": STR,
    "targetLabels": arr(STR),
    "podTargetLabels": arr(STR),
    "endpoints": arr(ENDPOINT),
    "selector": LABEL_SELECTOR,
    "selectorMechanism": {"type": "string", "enum": ["RelabelConfig", "RoleSelector"]},
    "namespaceSelector": obj({"any": BOOL, "matchNames": arr(STR)}),
    "sampleLimit": INT, "targetLimit": INT, "labelLimit": INT, "labelNameLengthLimit": INT,
    "labelValueLengthLimit": INT, "keepDroppedTargets": INT, "scrapeProtocols": arr(STR),
    "fallbackScrapeProtocol": STR, "attachMetadata": obj({"node": BOOL}), "scrapeClass": STR,
    "bodySizeLimit": STR,
}, required=["selector"]))

RULE = {
    "type": "object",
    "properties": {
        "record": STR, "alert": STR, "expr": INT_OR_STR, "for": DURATION, "keep_firing_for": DURATION,
        "labels": STRMAP, "annotations": STRMAP,
    },
    "additionalProperties": False,
    "required": ["expr"],
    # exactly one of record / alert
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
}
PROMETHEUS_RULE = resource("monitoring.coreos.com/v1", "PrometheusRule", obj({
    "groups": arr(obj({
        "name": {"type": "string", "minLength": 1},
        "interval": DURATION, "query_offset": DURATION, "limit": INT, "partial_response_strategy": STR,
        "labels": STRMAP,
        "rules": arr(RULE),
    }, required=["name"])),
}))

FILES = {
    "keda.sh/scaledobject_v1alpha1.json": SCALED_OBJECT,
    "keda.sh/triggerauthentication_v1alpha1.json": TRIGGER_AUTHENTICATION,
    "monitoring.coreos.com/servicemonitor_v1.json": SERVICE_MONITOR,
    "monitoring.coreos.com/prometheusrule_v1.json": PROMETHEUS_RULE,
}


def main() -> None:
    for name, schema in FILES.items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(path.relative_to(HERE))


if __name__ == "__main__":
    main()
