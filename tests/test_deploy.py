"""The deployment files in deploy/ agree with the program: commands parse, settings load, workers are all there.

Docker and Kubernetes are not run here; these checks catch what would otherwise only fail on a cluster: a worker
command the CLI refuses, an environment variable or settings key that is no Settings field, a worker missing or
doubled, or an indexer and API that do not see the same index directory.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from personsearch.cli import build_parser
from personsearch.runtime import WORKERS
from personsearch.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SETTINGS_PATH = "/etc/personsearch/settings.yaml"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _k8s_objects() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None and doc.get("kind") != "Kustomization"
    ]


def _pod_specs() -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in _k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]


def _workers_of(workload: dict[str, Any]) -> set[str]:
    """The worker names a Deployment's containers run."""
    return {_cli(c["args"]).name for c in workload["spec"]["template"]["spec"]["containers"]}


def _cli(argv: list[str]) -> Any:
    """The CLI's parse of a container command (the image's ENTRYPOINT `personsearch` may or may not be spelled)."""
    if argv and argv[0] == "personsearch":
        argv = argv[1:]
    return build_parser().parse_args(argv)


def _settings_field(env_name: str) -> bool:
    """Whether ``PERSONSEARCH_A__B`` names a field of Settings (the top level ignores unknown names silently)."""
    model: Any = Settings
    parts = env_name.removeprefix("PERSONSEARCH_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            model = field.annotation
    return True


def _env_vars() -> dict[str, str]:
    """Every PERSONSEARCH_* variable the Dockerfiles, the compose file and the manifests set (secrets: a sample)."""
    found: dict[str, str] = {}
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        lines = [ln for ln in (DEPLOY / dockerfile).read_text().splitlines() if not ln.lstrip().startswith("#")]
        found.update(re.findall(r"\b(PERSONSEARCH_\w+)=(\S+)", "\n".join(lines)))
    for service in _compose()["services"].values():
        found.update({k: str(v) for k, v in service.get("environment", {}).items() if k.startswith("PERSONSEARCH_")})
    for spec in _pod_specs():
        for container in spec["containers"]:
            for var in container.get("env", []):
                if var["name"].startswith("PERSONSEARCH_"):
                    found[var["name"]] = var.get("value", "redis://redis.example:6379/0")
    return found


def test_every_deploy_yaml_parses() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(paths) >= 5
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"


def test_compose_commands_parse_and_run_every_worker_once() -> None:
    services = _compose()["services"]
    workers: list[str] = []
    for name, service in services.items():
        if name == "redis":
            continue
        args = _cli(service["command"])
        assert args.command == "worker"
        assert args.config == SETTINGS_PATH
        assert args.name == name, "a service is named after its worker"
        workers.append(args.name)
    assert sorted(workers) == sorted(WORKERS)


def test_compose_workers_share_one_redis_and_wait_for_it() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert "redis-cli" in redis["healthcheck"]["test"]
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        assert service["environment"]["PERSONSEARCH_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["restart"] == "unless-stopped"


def test_compose_only_the_detector_is_scaled() -> None:
    services = _compose()["services"]
    replicas = {name: s.get("deploy", {}).get("replicas", 1) for name, s in services.items()}
    assert replicas.pop("detector") == 2
    assert set(replicas.values()) == {1}


def test_compose_indexer_and_api_share_the_data_volume() -> None:
    compose = _compose()
    services = compose["services"]

    def data_volume(service: dict[str, Any]) -> str | None:
        for v in service["volumes"]:
            if isinstance(v, str) and v.split(":")[1] == "/data":
                return v.split(":")[0]
        return None

    assert data_volume(services["indexer"]) == data_volume(services["api"]) == "personsearch-data"
    assert "personsearch-data" in compose["volumes"]


def test_compose_mounts_the_settings_file_read_only() -> None:
    for name, service in _compose()["services"].items():
        if name == "redis":
            continue
        mounts = [v for v in service["volumes"] if isinstance(v, dict) and v["target"] == SETTINGS_PATH]
        assert len(mounts) == 1 and mounts[0]["read_only"] is True
        assert mounts[0]["source"] == "./settings.yaml"


def test_compose_api_is_published_on_8080_and_probes_health() -> None:
    api = _compose()["services"]["api"]
    assert api["environment"]["PERSONSEARCH_API__HOST"] == "0.0.0.0"
    assert "8080:8080" in api["ports"]
    probe = " ".join(api["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/health" in probe


def test_every_environment_variable_is_a_settings_field(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env_vars()
    assert {"PERSONSEARCH_REDIS_URL", "PERSONSEARCH_DATA_DIR", "PERSONSEARCH_API__HOST"} <= set(env)
    for name, value in env.items():
        assert _settings_field(name), f"{name} is no Settings field"
        monkeypatch.setenv(name, value)
    settings = load_settings(None)
    assert settings.redis_url is not None and str(settings.data_dir) == "/data"
    assert settings.api.host == "0.0.0.0"


def test_settings_example_loads() -> None:
    settings = load_settings(DEPLOY / "settings.example.yaml")
    assert settings.api.port == 8080 and settings.api.auth


def test_configmap_settings_load(tmp_path: Path) -> None:
    (configmap,) = [o for o in _k8s_objects() if o["kind"] == "ConfigMap"]
    path = tmp_path / "settings.yaml"
    path.write_text(configmap["data"]["settings.yaml"])
    settings = load_settings(path)
    assert settings.api.port == 8080


def test_k8s_runs_every_worker_in_exactly_one_container() -> None:
    workers: list[str] = []
    for spec in _pod_specs():
        for container in spec["containers"]:
            args = _cli(container.get("command", []) + container["args"])
            assert args.command == "worker" and args.config == SETTINGS_PATH
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/etc/personsearch" in mounts
            (redis_url,) = [v for v in container["env"] if v["name"] == "PERSONSEARCH_REDIS_URL"]
            assert redis_url["valueFrom"]["secretKeyRef"] == {"name": "personsearch-redis", "key": "url"}
            workers.append(args.name)
    assert sorted(workers) == sorted(WORKERS)


def test_k8s_workers_with_per_camera_state_run_one_replica() -> None:
    for obj in _k8s_objects():
        if obj["kind"] != "Deployment":
            continue
        names = _workers_of(obj)
        if names & {"ingest", "tracker", "matcher", "indexer"}:
            assert obj["spec"]["replicas"] == 1, obj["metadata"]["name"]
            assert obj["spec"]["strategy"]["type"] == "Recreate", obj["metadata"]["name"]
        if "detector" in names:
            assert obj["spec"]["replicas"] == 2


def test_k8s_indexer_and_api_share_one_pod_and_its_volume_claim() -> None:
    (deployment,) = [o for o in _k8s_objects() if o["kind"] == "Deployment" and _workers_of(o) == {"indexer", "api"}]
    spec = deployment["spec"]["template"]["spec"]
    (claim,) = [v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    for container in spec["containers"]:
        assert {"name": claim, "mountPath": "/data"} in container["volumeMounts"]
    assert spec["securityContext"]["fsGroup"] == 10001


def test_k8s_api_is_served_on_8080_and_probed_without_a_key() -> None:
    (service,) = [o for o in _k8s_objects() if o["kind"] == "Service"]
    assert [p["port"] for p in service["spec"]["ports"]] == [8080]
    (deployment,) = [o for o in _k8s_objects() if o["kind"] == "Deployment" and "api" in _workers_of(o)]
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (api,) = [c for c in pod["spec"]["containers"] if _cli(c["args"]).name == "api"]
    assert api["ports"] == [{"name": "http", "containerPort": 8080}]
    # /ready sits behind the API key (personsearch/api/app.py) and a probe carries none.
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "PERSONSEARCH_API__HOST", "value": "0.0.0.0"} in api["env"]


def test_k8s_manifests_name_no_namespace() -> None:
    for obj in _k8s_objects():
        assert "namespace" not in obj["metadata"], obj["metadata"]["name"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_installs_the_project_as_a_non_root_personsearch_entrypoint(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    assert re.search(r'^ENTRYPOINT \["personsearch"\]$', text, re.M)
    assert re.search(r"^RUN pip install \"?/src(\[gpu\])?\"? ", text, re.M)
    for package in ("personsearch", "ingest", "detector", "index", "watchlist", "training"):
        assert f"COPY {package} /src/{package}" in text
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert user.split(":")[0] not in ("root", "0")
    assert re.search(r"^EXPOSE 8080 9108$", text, re.M)
    assert 'VOLUME ["/data"]' in text


def test_cpu_image_pins_the_torch_of_pyproject() -> None:
    pins = re.findall(r'"(torch(?:vision)?==[^"]+)"', (ROOT / "pyproject.toml").read_text())
    text = (DEPLOY / "Dockerfile").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("RUN pip install --index-url")]
    assert "https://download.pytorch.org/whl/cpu" in line
    assert sorted(pins) == sorted(shlex.split(line)[5:])


def test_commands_in_the_deploy_docs_parse() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    commands = re.findall(r"(?:exec \S+|--) (personsearch [^\n#`]+)", text)
    assert any(" apikeys " in c for c in commands)
    for command in commands:
        _cli(shlex.split(command))
