"""The deployment files say what the service issue requires of them.

`make lint-deploy` checks their syntax against the Compose and Kubernetes schemas and lints the
Dockerfile; these tests check their meaning: Redis in memory and private, the worker scaling,
the start order, and that every setting uses the service's own variable names and defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from resizer.config import LogFormat, Settings, specs

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RESIZER_SERVICES = ("web", "worker", "recover")
# Every server setting, by its variable; compose's own `redis` service differs by design.
SERVER_VARIABLES = {spec.env for _, spec in specs(Settings)}


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    assert total > 0, duration
    return total


def _compose_default(value: str) -> str:
    """`${NAME:-default}` -> default; a literal stays as it is."""
    match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", value)
    return match.group(2) if match else value


# --- docker-compose.yml -------------------------------------------------------------------


def test_compose_has_the_four_services(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "web", "worker", "recover"}


def test_redis_is_in_memory_bounded_and_private(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis"  # the official image
    assert "ports" not in redis, "Redis must not be published to the host"
    command = redis["command"]
    assert isinstance(command, list)
    pairs = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert pairs["--save"] == ""
    assert pairs["--appendonly"] == "no"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--maxmemory"]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_web_serves_port_8080_once_redis_is_healthy(services: dict[str, Any]) -> None:
    web = services["web"]
    assert web["command"][0] == "serve"
    assert web["command"][web["command"].index("--port") + 1] == "8080"
    assert any(str(port).endswith(":8080") for port in web["ports"])
    assert web["healthcheck"]["test"][1:3] == ["resizer", "healthcheck"]


@pytest.mark.parametrize("name", RESIZER_SERVICES)
def test_resizer_services_wait_for_a_healthy_redis(services: dict[str, Any], name: str) -> None:
    assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services[name]["init"] is True  # a PID 1 that forwards docker stop's SIGTERM


def test_workers_are_two_scalable_and_stop_gracefully(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert worker["command"] == ["work"]
    assert worker["deploy"]["replicas"] == 2
    # --scale worker=N needs no fixed container name and no published port
    assert "container_name" not in worker
    assert "ports" not in worker
    assert _seconds(worker["stop_grace_period"]) > Settings().lease_seconds
    assert worker["healthcheck"]["test"] == ["CMD", "resizer", "work", "--check"]
    # podman-compose reads replicas only beside an explicit mode
    assert worker["deploy"]["mode"] == "replicated"


def test_recover_loops_every_30_seconds(services: dict[str, Any]) -> None:
    assert services["recover"]["command"] == ["recover", "--every", "30"]
    assert services["recover"]["healthcheck"]["test"] == ["CMD", "resizer", "recover", "--check"]


@pytest.mark.parametrize("name", RESIZER_SERVICES)
def test_compose_settings_use_the_service_names_and_defaults(
    services: dict[str, Any], name: str
) -> None:
    environment = services[name]["environment"]
    assert set(environment) == SERVER_VARIABLES
    defaults = {key: _compose_default(str(value)) for key, value in environment.items()}
    assert defaults["REDIS_URL"].startswith("redis://redis:6379")
    without_url = {k: v for k, v in defaults.items() if k != "REDIS_URL"}
    assert Settings.from_env(without_url) == Settings()


# --- Dockerfile and .dockerignore ---------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_is_multi_stage_from_the_lock_file() -> None:
    instructions = _instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    copies = " ".join(rest for keyword, rest in instructions if keyword == "COPY")
    assert "poetry.lock" in copies
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "--only main" in runs
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    assert not any("poetry" in rest for keyword, rest in final if keyword == "RUN")


def test_dockerfile_runtime_contract() -> None:
    instructions = _instructions()
    final: dict[str, str] = {}
    for keyword, rest in instructions:  # last one wins, as in Docker
        final[keyword] = rest
    assert final["ENTRYPOINT"] == '["resizer"]'
    assert final["USER"].split(":")[0] not in {"root", "0"}
    assert 'CMD ["resizer", "healthcheck"' in final["HEALTHCHECK"]
    assert "curl" not in final["HEALTHCHECK"]
    assert "8080" in final["EXPOSE"]


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for keyword, rest in _instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.update(rest.split()[:-1])
    assert copied <= allowed
    assert {".git", ".venv", "tests"}.isdisjoint(allowed)


# --- deploy/k8s ---------------------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    """(kind/name) -> resource, for the resources that kustomization.yaml lists."""
    kustomization = _load(K8S / "kustomization.yaml")
    result: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text()):
            result[f"{document['kind']}/{document['metadata']['name']}"] = document
    return result


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_load(K8S / "kustomization.yaml")["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def _pod_specs(manifests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        key: doc["spec"]["template"]["spec"]
        for key, doc in manifests.items()
        if doc["kind"] == "Deployment"
    }


def test_k8s_has_the_required_resources() -> None:
    manifests = _manifests()
    for key in (
        "ConfigMap/resizer-config",
        "Secret/resizer-redis",
        "Deployment/resizer-web",
        "Service/resizer-web",
        "Deployment/resizer-worker",
        "HorizontalPodAutoscaler/resizer-worker",
        "Deployment/resizer-recover",
    ):
        assert key in manifests, key
    hpa = manifests["HorizontalPodAutoscaler/resizer-worker"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "resizer-worker",
    }
    assert hpa["minReplicas"] >= 2


def test_k8s_settings_use_the_service_names_and_defaults() -> None:
    manifests = _manifests()
    config = manifests["ConfigMap/resizer-config"]["data"]
    # The secrets come from the Secret; the rest are every server setting.
    assert set(config) | {"REDIS_URL", "RESIZER_API_TOKEN"} == SERVER_VARIABLES
    assert attrs.evolve(Settings.from_env(config), log_format=LogFormat.AUTO) == Settings()
    assert "REDIS_URL" in manifests["Secret/resizer-redis"]["stringData"]
    for key, spec in _pod_specs(manifests).items():
        (container,) = spec["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "resizer-config"}}], key
        assert container["env"] == [
            {
                "name": "REDIS_URL",
                "valueFrom": {"secretKeyRef": {"name": "resizer-redis", "key": "REDIS_URL"}},
            }
        ], key
        assert spec["securityContext"]["runAsNonRoot"] is True, key
        assert spec["shareProcessNamespace"] is True, key  # resizer is not PID 1
        assert "requests" in container["resources"], key
        assert "memory" in container["resources"]["limits"], key


def test_k8s_web_probes_and_worker_grace() -> None:
    manifests = _manifests()
    specs = _pod_specs(manifests)
    (web,) = specs["Deployment/resizer-web"]["containers"]
    assert web["args"][0] == "serve"
    assert web["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert web["livenessProbe"]["httpGet"]["path"] == "/health"
    (worker,) = specs["Deployment/resizer-worker"]["containers"]
    assert worker["args"] == ["work"]
    grace = specs["Deployment/resizer-worker"]["terminationGracePeriodSeconds"]
    assert grace > Settings().lease_seconds
    (recover,) = specs["Deployment/resizer-recover"]["containers"]
    assert recover["args"][0] == "recover"


# --- docker-compose.cluster.yml -------------------------------------------------------------


def test_the_cluster_file_runs_resizer_on_six_cluster_nodes() -> None:
    cluster = _load(ROOT / "docker-compose.cluster.yml")["services"]
    nodes = {name: svc for name, svc in cluster.items() if name.startswith("redis-node-")}
    assert len(nodes) == 6
    for node in nodes.values():
        command = node["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
        assert "ports" not in node  # private, like the base file's Redis
    init = cluster["redis-cluster-init"]
    assert "--cluster-replicas 1" in init["command"][0]
    assert set(init["depends_on"]) == set(nodes)
    for name in RESIZER_SERVICES:
        service = cluster[name]
        url = _compose_default(service["environment"]["REDIS_URL"])
        assert url.startswith("redis+cluster://")
        assert service["depends_on"]["redis-cluster-init"] == {
            "condition": "service_completed_successfully"
        }
        assert _compose_default(service["environment"]["RESIZER_PARTITIONS"]) == "16"
