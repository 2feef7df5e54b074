"""deploy/ checked offline: the Kubernetes manifests against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), the Strimzi topics against streams/topics.py, every METACART_* variable
in the manifests and the compose file against the settings, and the Grafana dashboard's queries against
the metrics a worker exports."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from metacart.console import setting_variables
from streams.metrics import EXPORTED
from streams.retention_state import TABLES
from streams.settings import Settings
from streams.topics import Topics
from streams.worker import roles_of

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.32.0"
KNOWN = setting_variables(Settings)


def k8s_docs() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def config() -> dict[str, str]:
    (cm,) = by_kind("ConfigMap")
    return cm["data"]


def test_builtin_resources_validate_strictly_against_the_kubernetes_schema():
    docs = [d for d in k8s_docs() if not d["apiVersion"].startswith("kafka.strimzi.io/")]
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Job",
                                         "Service", "StatefulSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(by_kind("StatefulSet")[0])  # the validator does reject a wrong manifest
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_workers_are_statefulsets_with_state_volumes_probes_and_config():
    cfg = config()
    (secret,) = by_kind("Secret")
    port = int(cfg["METACART_WEB_PORT"])
    data_dir = Path(cfg["METACART_STORE__DATA_DIR"])
    roles = set()
    for sts in by_kind("StatefulSet"):
        pod = sts["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["worker"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {"configMapRef": "metacart-config", "secretRef": secret["metadata"]["name"]}
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert data_dir.is_relative_to(mounts[claim["metadata"]["name"]])
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert Path(cfg["METACART_POLICY__ARTIFACT"]).is_relative_to(mounts["artifacts"])
        env = {e["name"]: e["value"] for e in container["env"]}
        settings = Settings(**_nested(cfg | secret["stringData"] | env))  # the pod's settings validate
        roles |= roles_of(settings)
        assert settings.worker_id == sts["metadata"]["name"] == sts["spec"]["serviceName"]
    assert roles == {"ads", "retention"}


def _nested(env: dict[str, str]) -> dict:
    """METACART_A__B=v as Settings(a={"b": v}) (what pydantic-settings does with the environment)."""
    out: dict = {}
    for key, value in env.items():
        assert key in KNOWN, f"{key} names no setting"
        parts = key.removeprefix("METACART_").lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def test_every_variable_in_the_manifests_is_a_setting():
    for doc in by_kind("ConfigMap") + by_kind("Secret"):
        for key in doc.get("data", {}) | doc.get("stringData", {}):
            assert key in KNOWN, (doc["metadata"]["name"], key)
    for doc in by_kind("StatefulSet") + by_kind("Job"):
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            for e in container.get("env", []):
                assert e["name"] in KNOWN, e


def test_kafka_topics_match_the_topic_definitions_with_partitions_and_replication():
    cfg = config()
    topics = Topics(cfg["METACART_KAFKA__TOPIC_PREFIX"], int(cfg["METACART_KAFKA__SEGMENT_PARTITIONS"]),
                    int(cfg["METACART_KAFKA__USER_PARTITIONS"]))
    declared = {}
    for doc in by_kind("KafkaTopic"):
        assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert doc["metadata"]["labels"]["strimzi.io/cluster"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]
        spec = doc["spec"]
        assert isinstance(spec["partitions"], int) and spec["partitions"] >= 1
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == 2
        declared[spec["topicName"]] = spec
    for t in topics.all():
        assert declared[t.name]["partitions"] == t.partitions, t.name
    workers = {s["metadata"]["name"]: s for s in by_kind("StatefulSet")}
    changelogs = {f"{w}-ads-{t}-changelog" for t in ("posteriors", "pending", "marks") for w in workers
                  if w.endswith("-ads")}
    changelogs |= {f"{w}-retention-{t}-changelog" for t in TABLES for w in workers if w.endswith("-retention")}
    for name in changelogs:
        assert declared[name]["config"]["cleanup.policy"] == "compact", name
        keyed = topics.segment_partitions if "-ads-" in name else topics.user_partitions
        assert declared[name]["partitions"] == keyed, name  # co-partitioned with its source topics
    leaders = {f"{w}-__assignor-__leader" for w in workers}
    assert set(declared) == {t.name for t in topics.all()} | changelogs | leaders


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_trains_both_artifacts_and_every_service_has_a_healthcheck():
    services = compose()["services"]
    assert {"kafka", "worker-ads", "worker-retention", "simulator", "prometheus", "grafana"} <= set(services)
    trained = {s["command"][s["command"].index("--kind") + 1]: s["command"][s["command"].index("--out") + 1]
               for s in services.values() if s.get("command", [None])[0] == "train"}
    assert set(trained) == {"ads", "retention"}
    workers = {n: s for n, s in services.items() if s.get("command") == ["worker"]}
    for name, svc in workers.items():
        env = svc["environment"]
        artifact = env.get("METACART_POLICY__ARTIFACT") or env["METACART_RETENTION__ARTIFACT"]
        assert artifact == trained[env["METACART_AGENTS"]]
        assert "readyz" in " ".join(svc["healthcheck"]["test"])
        assert f":{env['METACART_WEB_PORT']}" in svc["ports"][0]
    for name in ("kafka", "prometheus", "grafana", *workers):
        assert services[name]["healthcheck"]["test"], name
    for svc in services.values():
        for key in svc.get("environment", {}):
            if key.startswith("METACART_"):
                assert key in KNOWN, key
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), host
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{n}:{s['environment']['METACART_WEB_PORT']}" for n, s in workers.items()}


def dashboard() -> dict:
    return json.loads((ROOT / "deploy/grafana/dashboards/metacart.json").read_text())


def queried_metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\bmetacart_[a-z_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_every_metric_the_dashboard_queries_is_exported():
    exported = set(EXPORTED) | {n + "_info" for n in EXPORTED}
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    queried = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = queried_metrics(target["expr"])
            assert names, target["expr"]
            assert names <= exported, (panel["title"], names - exported)
            queried |= names
    for required in ("metacart_decisions_total", "metacart_decision_latency_seconds", "metacart_consumer_lag",
                     "metacart_dead_letters_total", "metacart_rewards_total", "metacart_open_decisions",
                     "metacart_retention_spend_total", "metacart_policy_info"):
        assert required in queried, required
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert dashboard()["templating"]["list"][0]["current"]["value"] == provisioned["datasources"][0]["uid"]
