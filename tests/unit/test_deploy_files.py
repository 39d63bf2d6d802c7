"""The deployment files under deploy/, checked without Docker, Kubernetes or Ray.

Each file is read as the tool that consumes it would read it, as far as that
tool can be run offline: Ray Serve's own pydantic schema for the Serve configs,
the Kubernetes JSON schemas (``kubernetes-validate``) for the manifests' core
objects, ``promtool`` for every Prometheus config and PromQL expression. The
rest are cross-checks: the files agree with each other, with pyproject.toml's
pins and with the metrics the gateway exports.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry
from ray._private import ray_constants
from ray.serve.schema import ServeDeploySchema
from sqlalchemy.engine import make_url

from rollout.core.plan import Guardrails
from serving.app import BuildArgs
from serving.kernel.config import RampartConfig, parse_config
from telemetry import dashboard
from telemetry.metrics import DriftMetrics, LogWriterMetrics, RequestMetrics, ShadowMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMPORT_PATH = "serving.app:build"


def _ray_version() -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        if match := re.fullmatch(r"ray\[[^\]]*\]==(\S+)", dep):
            return match.group(1)
    raise AssertionError("pyproject.toml pins no ray[serve]==VERSION")


RAY_VERSION = _ray_version()
PROJECT_VERSION: str = PYPROJECT["project"]["version"]
RAMPART_IMAGE = f"rampart:{PROJECT_VERSION}"
# Where the image's pip install puts the HAProxy hardening wrapper (Ray's conda env).
IMAGE_HAPROXY_GUARD = "/home/ray/anaconda3/bin/rampart-haproxy"


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make system-deps` installs Debian's prometheus packages"
    return path


def _promtool_run(*args: str, cwd: Path | None = None) -> None:
    result = subprocess.run([_promtool(), *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Ray Serve config --------------------------------------------------------------------


def _serve_schema(data: Any) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(data)


def _serve_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    return data


def test_serve_yaml_is_a_valid_serve_config_for_the_gateway() -> None:
    config = _serve_schema(_serve_yaml())
    [app] = config.applications
    assert (app.name, app.route_prefix, app.import_path) == ("rampart", "/", IMPORT_PATH)
    assert config.http_options.host == "0.0.0.0"
    # The config argument is relative to the directory Ray runs in: the
    # repository root here, the image's working directory (which copies deploy/).
    config_arg = Path(app.args["config"])
    assert not config_arg.is_absolute()
    assert (ROOT / config_arg).is_file(), config_arg
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^COPY .*\b{re.escape(str(config_arg))}\b", dockerfile, re.M), (
        "the image must hold the config serve.yaml names")


def test_serve_configs_agree_with_the_rampart_configs_they_name() -> None:
    # Serve's proxies are placed by the Serve config, not the builder: the two
    # must say the same, as must the port the gateway is reached on.
    local = _serve_schema(_serve_yaml())
    example = parse_config(yaml.safe_load((ROOT / local.applications[0].args["config"])
                                          .read_text()))
    cluster = parse_config(yaml.safe_load(_one("ConfigMap")["data"]["rampart.yaml"]))
    for serve, config in ((local, example), (_serve_config_v2(), cluster)):
        assert serve.proxy_location.value == config.server.proxy_location
        assert serve.http_options.port == config.server.port


def test_serve_schema_rejects_a_broken_config() -> None:
    # Guards the check above: a config that is not Serve's is refused.
    broken = _serve_yaml()
    broken["applications"][0]["import_path"] = "serving.app:build:extra"
    with pytest.raises(ValueError):
        _serve_schema(broken)


# --- KubeRay manifests -------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    text = (DEPLOY / "kuberay" / "rayservice.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _one(kind: str) -> dict[str, Any]:
    [doc] = [d for d in _manifests() if d["kind"] == kind]
    return doc


def _groups(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group


def _containers(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, group in _groups(rayservice):
        for container in group["template"]["spec"]["containers"]:
            yield name, container


def _serve_config_v2() -> ServeDeploySchema:
    text = _one("RayService")["spec"]["serveConfigV2"]
    assert isinstance(text, str), "KubeRay takes serveConfigV2 as a YAML string"
    return _serve_schema(yaml.safe_load(text))


def test_rayservice_serves_the_same_application_as_serve_yaml() -> None:
    in_cluster = _serve_config_v2()
    local = _serve_schema(_serve_yaml())
    assert in_cluster.applications[0].import_path == IMPORT_PATH

    def without_config_arg(config: ServeDeploySchema) -> dict[str, Any]:
        dumped = config.model_dump()
        for app in dumped["applications"]:
            assert set(app["args"]) == {"config"}
            app["args"] = {}
        return dumped

    # Only where the config file is read from differs: the mounted ConfigMap.
    assert without_config_arg(in_cluster) == without_config_arg(local)
    # And both hand the builder arguments it takes.
    for config in (in_cluster, local):
        BuildArgs.model_validate(config.applications[0].args)


def test_rayservice_reads_the_config_from_the_mounted_configmap() -> None:
    rayservice, configmap = _one("RayService"), _one("ConfigMap")
    config_path = Path(_serve_config_v2().applications[0].args["config"])
    assert config_path.name in configmap["data"]
    for name, group in _groups(rayservice):
        spec = group["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            mounts = [m for m in container["volumeMounts"]
                      if volumes[m["name"]].get("configMap", {}).get("name")
                      == configmap["metadata"]["name"]]
            assert [Path(m["mountPath"]) for m in mounts] == [config_path.parent], name
            env = {e["name"]: e for e in container["env"]}
            assert env["RAMPART_CONFIG"]["value"] == str(config_path), name


def test_rayservice_configmap_holds_a_valid_rampart_config() -> None:
    config = parse_config(yaml.safe_load(_one("ConfigMap")["data"]["rampart.yaml"]),
                          "ConfigMap rampart-config")
    assert config.server.host == "0.0.0.0"
    # The password comes from the environment (PGPASSWORD), never the ConfigMap.
    url = make_url(config.resolved_store_url())
    assert url.get_backend_name() == "postgresql" and url.password is None
    serve_port = _serve_config_v2().http_options.port
    assert config.server.port == serve_port


def test_rayservice_has_the_structure_kuberay_documents() -> None:
    rayservice = _one("RayService")
    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == RAY_VERSION
    workers = cluster["workerGroupSpecs"]
    assert len(workers) >= 1
    for group in workers:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for name, group in _groups(rayservice):
        params = group["rayStartParams"]
        # `ray start` flags: KubeRay wants every value a string.
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), name
        assert group["template"]["spec"]["containers"], name
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    assert head_params["dashboard-host"] == "0.0.0.0", "KubeRay reaches Serve via the dashboard"


def test_every_ray_container_is_pinned_sized_and_runs_direct_ingress() -> None:
    rayservice = _one("RayService")
    for name, container in _containers(rayservice):
        assert container["image"] == RAMPART_IMAGE, name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == _serve_config_v2().http_options.port, name
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (name, kind)
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"]["value"] == "1", name
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1", name
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"]["value"] == IMAGE_HAPROXY_GUARD, name
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    head_ports = {p["name"] for c in head["template"]["spec"]["containers"] for p in c["ports"]}
    assert {"gcs-server", "dashboard", "client", "serve"} <= head_ports


SECRET_ENV = {"PGPASSWORD": "rampart-postgres", "AWS_ACCESS_KEY_ID": "rampart-s3",
              "AWS_SECRET_ACCESS_KEY": "rampart-s3", "RAMPART_ADMIN_TOKEN": "rampart-admin"}


def test_rayservice_takes_credentials_from_secrets_only() -> None:
    for name, container in _containers(_one("RayService")):
        env = {e["name"]: e for e in container["env"]}
        for var, secret in SECRET_ENV.items():
            assert "value" not in env[var], (name, var)
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == secret, (name, var)
        literal = [e["name"] for e in container["env"] if "value" in e
                   and re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", e["name"])]
        assert not literal, (name, literal)
    assert not [d for d in _manifests() if d["kind"] == "Secret"], "no secret values in git"


def _validate_k8s(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_objects_pass_the_kubernetes_schemas() -> None:
    _validate_k8s(_one("ConfigMap"))
    # KubeRay's pod templates are core/v1 PodTemplateSpecs: checked as Pods.
    for name, group in _groups(_one("RayService")):
        template = group["template"]
        _validate_k8s({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": f"rampart-{name}", **template.get("metadata", {})},
                       "spec": template["spec"]})


def test_kubernetes_schema_check_catches_a_broken_pod() -> None:
    _, group = next(_groups(_one("RayService")))
    spec = copy.deepcopy(group["template"]["spec"])
    spec["containers"][0]["ports"][0]["containerPort"] = "6379"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                       "spec": spec})


# --- Dockerfile ----------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_on_the_pinned_ray_image() -> None:
    instructions = _dockerfile_instructions()
    bases = [rest for word, rest in instructions if word == "FROM"]
    python = re.search(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert python
    assert bases == [f"rayproject/ray:{RAY_VERSION}-py{python.group(1)}{python.group(2)}"]


def test_dockerfile_runs_as_a_non_root_user_and_installs_with_the_pins() -> None:
    instructions = _dockerfile_instructions()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    installs = [rest for word, rest in instructions
                if word == "RUN" and re.search(r"\bpip install\b", rest)]
    assert installs and all(re.search(r"-c constraints\.txt\b", r) for r in installs)
    copies = " ".join(rest for word, rest in instructions if word == "COPY")
    assert "constraints.txt" in copies
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS=1" in env
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in env
    # Ray starts HAProxy through the hardening wrapper the install put there.
    assert f"RAY_SERVE_HAPROXY_BINARY_PATH={IMAGE_HAPROXY_GUARD}" in env
    assert any('test -x "$RAY_SERVE_HAPROXY_BINARY_PATH"' in r for r in installs)
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".rampart", ".git"} <= set(ignored)


# --- compose -------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def _compose_config() -> RampartConfig:
    return parse_config(yaml.safe_load((DEPLOY / "compose" / "rampart.yaml").read_text()),
                        "deploy/compose/rampart.yaml")


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to deploy/) or volume name."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def test_compose_has_the_stack_with_pinned_images() -> None:
    services = _compose()["services"]
    assert {"rampart", "mlflow", "postgres", "prometheus", "alertmanager",
            "grafana"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("", "latest"), (name, image)
    assert services["rampart"]["image"] == RAMPART_IMAGE
    assert services["rampart"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / services["rampart"]["build"]["context"] / "pyproject.toml").is_file()


def test_compose_files_it_mounts_exist() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for source in _mounts(service).values():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
    for secret in compose["secrets"].values():
        # Created by hand before `up` (see the file's header): only their folder is known.
        assert secret["file"].startswith("./compose/secrets/")


def test_compose_rampart_config_points_at_the_compose_services() -> None:
    compose = _compose()
    services = compose["services"]
    config = _compose_config()
    rampart = services["rampart"]
    config_path = rampart["environment"]["RAMPART_CONFIG"]
    assert _mounts(rampart)[config_path] == "./compose/rampart.yaml"
    assert rampart["environment"]["RAY_SERVE_HAPROXY_BINARY_PATH"] == IMAGE_HAPROXY_GUARD
    assert f"--config {config_path}" in " ".join(rampart["command"])

    store = make_url(config.resolved_store_url())
    postgres = services["postgres"]["environment"]
    assert store.host in services and store.password is None
    assert (store.username, store.database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])

    tracking = make_url(config.resolved_tracking_uri())
    assert tracking.host in services, tracking
    mlflow_command = " ".join(services[str(tracking.host)]["command"])
    assert f"--port {tracking.port}" in mlflow_command
    assert f"{tracking.host}:{tracking.port}" in mlflow_command, "MLflow's --allowed-hosts"
    assert f"@{store.host}:{store.port}/" in mlflow_command

    # Prometheus and Alertmanager live in the gateway's network namespace, so the
    # loopback addresses of deploy/prometheus and deploy/alertmanager are right.
    published = {int(p.split(":")[0]) for p in rampart["ports"]}
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [gateway_target] = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    [am_target] = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert gateway_target == f"127.0.0.1:{config.server.port}"
    assert {config.server.port, int(am_target.rsplit(":")[1]), 9090} <= published
    for name in ("prometheus", "alertmanager"):
        assert services[name]["network_mode"] == "service:rampart", name
    assert _mounts(services["prometheus"])["/etc/prometheus"] == "./prometheus"
    alertmanager = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    hook = alertmanager["receivers"][0]["webhook_configs"][0]
    assert hook["url"].startswith(f"http://127.0.0.1:{config.server.port}/")
    token_targets = [s["target"] for s in services["alertmanager"]["secrets"]
                     if isinstance(s, dict) and s["source"] == "admin-token"]
    assert token_targets == [hook["http_config"]["authorization"]["credentials_file"]]


def test_compose_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provisioning = DEPLOY / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://rampart:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "rampart.yml").read_text())[
        "providers"]
    assert mounts[f"{provider['options']['path']}/rampart.json"] == "./grafana/rampart.json"


# --- Prometheus ----------------------------------------------------------------------------

CLUSTER_BEGIN = "# --- cluster form (begin)"
CLUSTER_END = "# --- cluster form (end)"


def _cluster_scrape_configs() -> list[dict[str, Any]]:
    """The commented cluster form of prometheus.yml, uncommented."""
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    block = text.split(CLUSTER_BEGIN, 1)[1].split(CLUSTER_END, 1)[0]
    # Config lines are commented as "#  <yaml>"; prose as "# <text>".
    lines = [line[2:] for line in block.splitlines() if line.startswith("#  ")]
    jobs: list[dict[str, Any]] = yaml.safe_load("\n".join(lines))
    return jobs


def test_prometheus_config_passes_promtool() -> None:
    _promtool_run("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))


def test_prometheus_cluster_form_passes_promtool(tmp_path: Path) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = _cluster_scrape_configs()
    by_name = {job["job_name"]: job for job in jobs}
    assert set(by_name) == {"rampart-gateway", "ray"}
    ray_files = by_name["ray"]["file_sd_configs"][0]["files"]
    assert ray_files == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    cluster_config = parse_config(yaml.safe_load(_one("ConfigMap")["data"]["rampart.yaml"]))
    rampart_files = by_name["rampart-gateway"]["file_sd_configs"][0]["files"]
    assert rampart_files == [str(cluster_config.resolved_scrape_targets_file())]

    prom["scrape_configs"] = jobs
    prom["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in prom["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    _promtool_run("check", "config", str(tmp_path / "prometheus.yml"))


# --- Grafana dashboard ----------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "rampart.json").read_text())
    return data


def test_committed_dashboard_is_what_the_generator_writes() -> None:
    committed = (DEPLOY / "grafana" / "rampart.json").read_text()
    assert committed == dashboard.dashboard_json(), (
        "regenerate: python -m telemetry.dashboard --out deploy/grafana/rampart.json")


def test_the_readme_command_regenerates_the_committed_dashboard(tmp_path: Path) -> None:
    import sys

    out = tmp_path / "rampart.json"
    done = subprocess.run([sys.executable, "-m", "telemetry.dashboard", "--out", str(out)],
                          cwd=DEPLOY.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == (DEPLOY / "grafana" / "rampart.json").read_text()


def test_dashboard_writer_writes_the_json(tmp_path: Path) -> None:
    out = dashboard.write_dashboard(tmp_path / "sub" / "rampart.json")
    assert json.loads(out.read_text())["uid"] == dashboard.UID


def _exprs() -> list[str]:
    return [target["expr"] for panel in _dashboard()["panels"]
            for target in panel.get("targets", [])]


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by values Prometheus would receive."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_dashboard_covers_the_panels_it_promises() -> None:
    titles = " ".join(p["title"] for p in _dashboard()["panels"]).lower()
    for words in ("requests per second by version and arm", "error ratio", "p50", "p99",
                  "candidate weight", "phase", "shadow label agreement", "psi"):
        assert words in titles, words
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = _exprs()
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": _as_promql(expr)}
        for i, expr in enumerate(exprs)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    _promtool_run("check", "rules", str(tmp_path / "dashboard_rules.yml"))


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    # Guards the check above: promtool does parse each expression.
    rules = {"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (arm) (rate(rampart_requests_total[1m])"}]}]}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run([_promtool(), "check", "rules", str(tmp_path / "broken.yml")],
                            capture_output=True, text=True)
    assert result.returncode != 0


def _exported_metric_names() -> set[str]:
    """Every series name the gateway can export, from telemetry.metrics' own objects."""
    registry = CollectorRegistry()
    RequestMetrics(registry)
    ShadowMetrics(registry)
    LogWriterMetrics("decision_log", registry)  # as build_core makes them
    LogWriterMetrics("outcomes_log", registry)
    DriftMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    names = set()
    for family in registry.collect():
        for suffix in suffixes[family.type]:
            names.add(family.name + suffix)
    return names


def _recorded_names() -> set[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "recording.yml").read_text())
    return {rule["record"] for group in rules["groups"] for rule in group["rules"]}


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)             # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                        # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                       # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                  expr)                                          # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue                                             # a function or keyword
        names.add(match.group())
    return names


def test_metric_name_extraction_finds_names_and_skips_labels() -> None:
    assert _metric_names(
        'sum by (arm) (rate(rampart_requests_total{status="error"}[1m])) / on (arm) '
        "rampart:requests:rate1m and time() - x_seconds > 5") == {
        "rampart_requests_total", "rampart:requests:rate1m", "x_seconds"}


def test_dashboard_reads_only_metrics_the_gateway_exports() -> None:
    known = _exported_metric_names() | _recorded_names()
    assert {"rampart_requests_total", "rampart_request_latency_seconds_bucket",
            "rampart_feature_psi", "rampart_rollout_active"} <= known
    used: set[str] = set()
    for expr in _exprs():
        names = _metric_names(expr)
        assert names, expr
        assert names <= known, (sorted(names - known), expr)
        used |= names
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"])
            assert match and match.group(1) in known, variable["query"]
    # The panels the brief names read these families.
    assert {"rampart_shadow_label_agreement", "rampart_feature_psi",
            "rampart_rollout_candidate_weight_bp"} <= used


def _alert_thresholds() -> dict[str, float]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "alerts.yml").read_text())
    out = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            match = re.search(r"[<>]=?\s*([0-9.]+)", rule["expr"])
            assert match, rule["alert"]
            out[rule["alert"]] = float(match.group(1))
    return out


def test_dashboard_thresholds_are_the_alert_rules() -> None:
    assert _alert_thresholds() == {
        "RampartCandidateP99High": dashboard.ALERT_P99_DELTA_S,
        "RampartCandidateErrorRateHigh": dashboard.ALERT_ERROR_RATIO_DELTA,
        "RampartRolloutStuck": dashboard.ALERT_STUCK_AFTER_S,
        "RampartFeatureDrift": dashboard.ALERT_PSI,
        "RampartShadowDisagrees": dashboard.ALERT_SHADOW_AGREEMENT,
        "RampartLogWritesFailing": dashboard.ALERT_LOG_WRITE_ERRORS,
        "RampartLogRowsDropped": dashboard.ALERT_LOG_DROPPED_ROWS,
        "RampartLogJournalFailing": dashboard.ALERT_LOG_SPILL_ERRORS,
    }


def test_dashboard_guardrail_lines_are_the_default_guardrails() -> None:
    defaults = Guardrails()
    assert defaults.p99_latency_delta_ms is not None and defaults.error_rate_delta is not None
    drawn = (dashboard.GUARDRAIL_P99_DELTA_S, dashboard.GUARDRAIL_ERROR_RATIO_DELTA)
    assert drawn == (defaults.p99_latency_delta_ms / 1000, defaults.error_rate_delta)
