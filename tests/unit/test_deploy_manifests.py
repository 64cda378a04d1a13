"""deploy/: the Kubernetes manifests pass the API schemas (strict, offline), compose.yml passes the
compose spec, and both say what the server needs: probe paths, a grace period that covers the
drain, secrets from a Secret or an env file, two replicas behind nginx, Prometheus on both."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.core.config import Settings, load_settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30"
"""The oldest version the manifests promise to fit (kubernetes-validate bundles its schemas)."""
SECRET_ENV = {"SECURITY__API_KEYS", "HF_TOKEN", "STATE__REDIS_URL"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    kustomization = documents(KUBERNETES / "kustomization.yaml")[0]
    for name in kustomization["resources"]:
        for doc in documents(KUBERNETES / name):
            yield name, doc


def find(kind: str, name: str) -> dict[str, Any]:
    [found] = [doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def server_container() -> dict[str, Any]:
    [container] = find("Deployment", "llm-server")["spec"]["template"]["spec"]["containers"]
    return container


def settings_from(
    config_yml: str, environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """What the server would load from this config.yml and these environment variables."""
    config = tmp_path / "config.yml"
    config.write_text(config_yml, encoding="utf-8")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return load_settings(config_file=config, env_file=None)


# --- Kubernetes --------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = documents(KUBERNETES / "kustomization.yaml")[0]["resources"]
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)


@pytest.mark.parametrize(
    "name", sorted(path.name for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")
)
def test_each_manifest_passes_the_kubernetes_schema_strictly(name: str) -> None:
    docs = documents(KUBERNETES / name)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")


def test_probes_use_liveness_for_startup_and_liveness_and_health_for_readiness() -> None:
    container = server_container()
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/health/live", "readinessProbe": "/health", "livenessProbe": "/health/live",
    }  # fmt: skip
    assert all(port[probe["port"]] == 8000 for probe in probes.values())
    assert container["command"] == ["python", "-m", "app"]  # the entry point that drains on SIGTERM


def test_the_grace_period_covers_the_prestop_sleep_and_the_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = find("Deployment", "llm-server")["spec"]["template"]["spec"]
    sleep, seconds = server_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep" and int(seconds) >= 5
    settings = settings_from(
        find("ConfigMap", "llm-config")["data"]["config.yml"], k8s_secret_env(), tmp_path, monkeypatch
    )
    assert pod["terminationGracePeriodSeconds"] > int(seconds) + settings.engine.shutdown_grace_s


def k8s_secret_env() -> dict[str, str]:
    """The environment the Deployment builds from the Secret."""
    secret = find("Secret", "llm-secrets")["stringData"]
    environment = {}
    for variable in server_container()["env"]:
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference is not None:
            assert reference["name"] == "llm-secrets"
            environment[variable["name"]] = secret[reference["key"]]
    return environment


def test_secrets_come_from_the_secret_and_the_config_map_holds_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    literal = {v["name"] for v in server_container()["env"] if "value" in v}
    assert set(k8s_secret_env()) == SECRET_ENV and not literal & SECRET_ENV
    secret = find("Secret", "llm-secrets")["stringData"]
    assert all("REPLACE_ME" in value for key, value in secret.items() if key != "hf-token"), secret
    assert secret["redis-password"] in secret["redis-url"]
    redis_set = find("StatefulSet", "llm-redis")["spec"]
    redis = redis_set["template"]["spec"]["containers"][0]
    # A restarted Redis keeps sessions and usage: the append-only file on a volume of its own.
    assert "--appendonly" in redis["args"] and redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
    assert [claim["metadata"]["name"] for claim in redis_set["volumeClaimTemplates"]] == ["data"]
    assert redis["env"] == [
        {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "llm-secrets", "key": "redis-password"}}}
    ]
    config_yml = find("ConfigMap", "llm-config")["data"]["config.yml"]
    assert not {"api_keys", "redis_url", "token"} & set(re.findall(r"\w+", config_yml))
    settings = settings_from(config_yml, k8s_secret_env(), tmp_path, monkeypatch)
    assert settings.state.backend == "redis" and settings.app.host == "0.0.0.0"
    assert settings.state.redis_url.get_secret_value() == secret["redis-url"]
    assert [key.name for key in settings.security.api_keys] == ["alice"]


def test_pods_run_as_non_root() -> None:
    for kind, name in (("Deployment", "llm-server"), ("StatefulSet", "llm-redis")):
        pod = find(kind, name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_service_budget_and_autoscaler_point_at_the_replicas() -> None:
    deployment = find("Deployment", "llm-server")
    assert deployment["spec"]["replicas"] == 3
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert find("Service", "llm-server")["spec"]["selector"].items() <= labels.items()
    assert find("Service", "llm-server")["spec"]["ports"][0]["targetPort"] == "http"
    assert find("PodDisruptionBudget", "llm-server")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find("HorizontalPodAutoscaler", "llm-server")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-server"}
    assert hpa["minReplicas"] >= 2


def test_the_autoscaler_metric_is_the_queue_gauge_as_the_adapter_renames_it() -> None:
    [metric] = find("HorizontalPodAutoscaler", "llm-server")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    [rule] = documents(DEPLOY / "prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    served = rule["seriesQuery"].split("{")[0]
    assert served == "vllm:num_requests_waiting"
    renamed = re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), served)
    assert metric["pods"]["metric"]["name"] == renamed == "vllm_num_requests_waiting"


# --- docker compose ----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    [spec] = documents(DEPLOY / "compose.yml")
    return spec


def replicas() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose()["services"].items() if name.startswith("server-")}


def test_compose_passes_the_compose_spec() -> None:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*command, str(DEPLOY / "compose.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them (single quotes hold a literal value)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            values[name] = value[1:-1] if value.startswith("'") and value.endswith("'") else value
    return values


def test_two_replicas_built_from_the_repository_share_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = replicas()
    assert len(services) == 2
    for service in services.values():
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == ROOT / "Dockerfile"
        assert "SECURITY__API_KEYS" not in service["environment"]  # from the env file
        assert [entry["path"] for entry in service["env_file"]] == ["server.env"]
        assert service["environment"]["STATE__REDIS_URL"].startswith("redis://redis:")
        assert "/health" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
        environment = {**service["environment"], **env_file(DEPLOY / "server.env.example")}
        settings = settings_from((ROOT / "config.yml").read_text(encoding="utf-8"), environment, tmp_path, monkeypatch)
        assert settings.state.backend == "redis" and settings.app.host == "0.0.0.0"
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace > settings.engine.shutdown_grace_s
    assert "redis" in compose()["services"] and compose()["services"]["redis"]["image"].startswith("redis:")
    assert "server.env" in (ROOT / ".gitignore").read_text(encoding="utf-8")


def test_prometheus_scrapes_both_replicas_and_nginx_balances_them() -> None:
    expected = sorted(f"{name}:8000" for name in replicas())
    [job] = documents(DEPLOY / "prometheus.yml")[0]["scrape_configs"]
    assert sorted(target for group in job["static_configs"] for target in group["targets"]) == expected
    assert compose()["services"]["prometheus"]["volumes"] == ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro"]
    nginx = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert sorted(re.findall(r"^\s*server\s+(\S+:\d+)", nginx, re.MULTILINE)) == expected
    assert re.search(r"^\s*proxy_buffering off;", nginx, re.MULTILINE)  # tokens go out as they come
    [read_timeout] = re.findall(r"proxy_read_timeout (\d+)s;", nginx)
    assert int(read_timeout) >= 300
