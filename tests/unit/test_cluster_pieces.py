"""The pieces that put the gateway on a Ray cluster, tested without Ray running:
autoscaling and placement config, the Serve deployment options, HAProxy's
environment, the scrape-target file, the controller's refusal and digest, the
per-process metrics endpoint, the Serve application's args and the cluster
commands' argument checks.

Whatever touches process-wide state (os.environ, prometheus_client's
multiprocess mode) runs in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from rollout.actor import builtin_refusal, config_digest
from rollout.scrape_targets import SCRAPE_JOB, ScrapeTargets
from serving.app import BuildArgs
from serving.cli.main import main
from serving.documents import load_config
from serving.gateway.ports import ephemeral_floor, free_ports
from serving.gateway.ray_app import INGRESS_ENV, deployment_options, haproxy_env
from serving.kernel.config import (
    AutoscalingConfig,
    RampartConfig,
    ServerConfig,
    TelemetryConfig,
    parse_config,
)
from serving.kernel.errors import ConfigError
from telemetry.metrics import MULTIPROC_ENV, ProcessMetricsCollector

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_KEYS = {
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
    "RAY_SERVE_HAPROXY_SOCKET_PATH",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
}
FALLBACK_KEYS = {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"}
# The hardening wrapper Ray runs as HAProxy, and the limits it applies.
GUARD_KEYS = {"RAY_SERVE_HAPROXY_BINARY_PATH", "RAMPART_HAPROXY_REQUEST_TIMEOUT_S",
              "RAMPART_HAPROXY_MAX_CONNECTIONS_PER_SOURCE"}
# HAProxy refuses a UNIX socket path longer than this; Ray puts the metrics
# socket in a 56-character directory of its own under the configured one.
HAPROXY_MAX_SOCKET_PATH = 97
RAY_SOCKET_SUBDIR_CHARS = 56


def _config(**server: Any) -> RampartConfig:
    return parse_config({
        "models": [{"name": "m", "versions": ["1", "2"]}],
        "default": {"model": "m", "version": "1"},
        "server": server,
    })


def _child_env(**extra: str) -> dict[str, str]:
    """A clean environment for a child Python: no Ray, HAProxy or metrics settings."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    env.update(extra)
    return env


def _run_python(code: str, env: dict[str, str], *args: str, timeout: float = 120
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------- config


def test_autoscaling_refuses_min_above_max_naming_both() -> None:
    with pytest.raises(ValidationError) as err:
        AutoscalingConfig(min_replicas=5, max_replicas=3)
    message = str(err.value)
    assert "min_replicas (5)" in message
    assert "max_replicas (3)" in message
    # Equal bounds are a fixed count, not a mistake.
    assert AutoscalingConfig(min_replicas=3, max_replicas=3).max_replicas == 3


@pytest.mark.parametrize("overrides", [
    {},
    {"min_replicas": 0, "max_replicas": 1},
    {"min_replicas": 2, "max_replicas": 8, "target_ongoing_requests": 2.5,
     "upscale_delay_s": 0, "downscale_delay_s": 300, "look_back_period_s": 45},
])
def test_serve_options_are_what_ray_serve_autoscaling_config_takes(
        overrides: dict[str, Any]) -> None:
    from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig

    options = AutoscalingConfig(**overrides).serve_options()
    # Ray's model ignores unknown keys, so check the names against its fields too.
    assert set(options) <= set(ServeAutoscalingConfig.model_fields)
    assert set(options) == set(AutoscalingConfig.model_fields)
    serve_config = ServeAutoscalingConfig.model_validate(options)
    for key, value in options.items():
        assert getattr(serve_config, key) == value, key


def _shipped_configs() -> list[tuple[str, RampartConfig]]:
    kuberay = next(doc for doc in yaml.safe_load_all(
        (ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
        if doc and doc.get("kind") == "ConfigMap")
    return [("deploy/compose/rampart.yaml", load_config(ROOT / "deploy/compose/rampart.yaml")),
            ("kuberay ConfigMap", parse_config(yaml.safe_load(kuberay["data"]["rampart.yaml"])))]


def test_shipped_autoscaling_configs_are_taken_by_ray_serve_without_warnings() -> None:
    from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig

    for where, config in _shipped_configs():
        assert config.server.autoscaling is not None, where
        # Warnings are errors here: Ray's FutureWarnings about these values fail too.
        ServeAutoscalingConfig.model_validate(config.server.autoscaling.serve_options())


def test_server_cluster_settings_default_and_validate() -> None:
    server = ServerConfig()
    assert server.autoscaling is None
    assert server.max_replicas_per_node is None
    assert server.proxy_location == "EveryNode"
    server = ServerConfig.model_validate({
        "autoscaling": {"min_replicas": 2, "max_replicas": 6},
        "max_replicas_per_node": 1, "proxy_location": "HeadOnly"})
    assert server.autoscaling == AutoscalingConfig(min_replicas=2, max_replicas=6)
    assert server.max_replicas_per_node == 1
    assert server.proxy_location == "HeadOnly"
    for bad in ({"max_replicas_per_node": 0}, {"max_replicas_per_node": 101},
                {"proxy_location": "Disabled"}, {"autoscaling": {"max_replicas": 0}}):
        with pytest.raises(ValidationError):
            ServerConfig.model_validate(bad)


def test_scrape_targets_file_defaults_under_data_dir_unless_configured(tmp_path: Path) -> None:
    assert TelemetryConfig().scrape_targets_file is None
    config = _config().model_copy(update={"data_dir": tmp_path / "data"})
    default = tmp_path / "data" / "prometheus" / "targets.json"
    assert config.resolved_scrape_targets_file() == default
    chosen = tmp_path / "elsewhere" / "sd.json"
    configured = config.model_copy(
        update={"telemetry": TelemetryConfig(scrape_targets_file=chosen)})
    assert configured.resolved_scrape_targets_file() == chosen


def test_a_bad_cluster_setting_in_yaml_is_a_config_error_naming_file_and_field(
        tmp_path: Path) -> None:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.setdefault("server", {})["autoscaling"] = {"min_replicas": 6, "max_replicas": 2}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "server.autoscaling" in message
    assert "min_replicas (6)" in message and "max_replicas (2)" in message

    data["server"] = {"max_replicas_per_node": 0, "proxy_location": "Nowhere"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "server.max_replicas_per_node" in str(err.value)
    assert "server.proxy_location" in str(err.value)


# --------------------------------------------------------------------------- Serve options


class _Dummy:
    pass


def _serve_accepts(options: dict[str, Any]) -> Any:
    from ray import serve

    return serve.deployment(name="Dummy", **options)(_Dummy)


def test_deployment_options_fixed_count() -> None:
    assert deployment_options(_config()) == {"num_replicas": min(2, os.cpu_count() or 1)}
    assert deployment_options(_config(num_replicas=3)) == {"num_replicas": 3}
    assert deployment_options(_config(num_replicas=3), 5) == {"num_replicas": 5}
    assert _serve_accepts(deployment_options(_config(num_replicas=3))).num_replicas == 3


def test_deployment_options_autoscaling_and_its_override() -> None:
    config = _config(autoscaling={"min_replicas": 2, "max_replicas": 5,
                                  "target_ongoing_requests": 4}, num_replicas=3)
    options = deployment_options(config)
    expected = AutoscalingConfig(min_replicas=2, max_replicas=5, target_ongoing_requests=4)
    assert options == {"num_replicas": "auto", "autoscaling_config": expected.serve_options()}
    deployment = _serve_accepts(options)
    autoscaling = deployment._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (2, 5)
    assert autoscaling.target_ongoing_requests == 4
    # An explicit count wins over the config's autoscaling.
    assert deployment_options(config, 2) == {"num_replicas": 2}
    deployment = _serve_accepts(deployment_options(config, 2))
    assert deployment.num_replicas == 2
    assert deployment._deployment_config.autoscaling_config is None


@pytest.mark.parametrize("autoscaling", [None, {"min_replicas": 1, "max_replicas": 3}])
def test_max_replicas_per_node_is_passed_through(autoscaling: dict[str, int] | None) -> None:
    options = deployment_options(_config(max_replicas_per_node=1, autoscaling=autoscaling))
    assert options["max_replicas_per_node"] == 1
    assert deployment_options(_config(autoscaling=autoscaling)).get(
        "max_replicas_per_node") is None
    assert _serve_accepts(options)._replica_config.max_replicas_per_node == 1


# --------------------------------------------------------------------------- HAProxy env


def test_haproxy_env_puts_every_file_under_the_directory(tmp_path: Path) -> None:
    env = haproxy_env(tmp_path, 12345, 23456)
    assert set(env) == HAPROXY_KEYS | GUARD_KEYS  # no fallback ports given: Serve's own stay
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "12345"
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "23456"
    assert Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).name == "rampart-haproxy"
    paths = {k: v for k, v in env.items() if k in HAPROXY_KEYS and not k.endswith("_PORT")}
    assert len(paths) == 5
    for key, value in paths.items():
        assert Path(value) == tmp_path or Path(value).parent == tmp_path, key
    assert len(set(paths.values())) == len(paths)  # no two settings share a file

    with_fallback = haproxy_env(tmp_path, 12345, 23456, (34567, 45678))
    assert set(with_fallback) == HAPROXY_KEYS | GUARD_KEYS | FALLBACK_KEYS
    assert with_fallback["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "34567"
    assert with_fallback["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"] == "45678"
    assert {k: with_fallback[k] for k in HAPROXY_KEYS | GUARD_KEYS} == env


_SET_INGRESS = """
    import json, os, tempfile
    from serving.gateway.ray_app import set_ingress_env
    before = dict(os.environ)
    directory = set_ingress_env()
    changed = {k: v for k, v in os.environ.items() if before.get(k) != v}
    print(json.dumps({"directory": None if directory is None else str(directory),
                      "tempdir": tempfile.gettempdir(), "changed": changed}))
"""


def test_set_ingress_env_gives_a_directory_and_ports_of_its_own() -> None:
    result = _run_python(_SET_INGRESS, _child_env())
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    directory = Path(out["directory"])
    try:
        # only the owner file, which lets the next start tell a stale directory
        assert directory.is_dir() and [p.name for p in directory.iterdir()] == ["owner.pid"]
        assert directory.parent == Path(out["tempdir"])
        assert directory.name.startswith("rampart-hp-")
        changed = out["changed"]
        assert set(changed) == set(INGRESS_ENV) | HAPROXY_KEYS | GUARD_KEYS | FALLBACK_KEYS
        ports = [int(changed[key]) for key in (
            "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")]
        assert changed == {**INGRESS_ENV, **haproxy_env(directory, ports[0], ports[1],
                                                         (ports[2], ports[3]))}
        assert len(set(ports)) == 4
        assert all(1024 <= p <= 65535 for p in ports)
        assert not {8404, 9101, 8500, 9500} & set(ports)  # not Ray's fixed defaults
        longest = f"{directory}/{'x' * RAY_SOCKET_SUBDIR_CHARS}/metrics.sock"
        assert len(longest) <= HAPROXY_MAX_SOCKET_PATH, longest
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_set_ingress_env_keeps_a_configured_haproxy(tmp_path: Path) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    preset = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "/srv/haproxy/haproxy.cfg",
              "RAY_SERVE_PORT_QUARANTINE_S": "7"}
    result = _run_python(_SET_INGRESS, _child_env(TMPDIR=str(private_tmp), **preset))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["directory"] is None
    assert list(private_tmp.iterdir()) == []  # no directory made
    changed = out["changed"]
    # No HAProxy setting touched; the ingress flags are set, an operator's kept.
    assert not (HAPROXY_KEYS | GUARD_KEYS | FALLBACK_KEYS) & set(changed)
    assert changed == {k: v for k, v in INGRESS_ENV.items() if k not in preset}


# --------------------------------------------------------------------------- scrape targets


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_scrape_targets_groups_sorted_by_replica_with_labels() -> None:
    targets = ScrapeTargets(ttl_s=75, clock=_Clock())
    assert targets.groups() == []
    targets.seen("replica-b", "10.0.0.2:9001", "node-2")
    targets.seen("replica-a", "10.0.0.1:9000", "node-1")
    targets.seen("replica-c", "10.0.0.1:9002", "node-1")
    assert targets.groups() == [
        {"targets": ["10.0.0.1:9000"],
         "labels": {"replica": "replica-a", "node": "node-1", "job": SCRAPE_JOB}},
        {"targets": ["10.0.0.2:9001"],
         "labels": {"replica": "replica-b", "node": "node-2", "job": SCRAPE_JOB}},
        {"targets": ["10.0.0.1:9002"],
         "labels": {"replica": "replica-c", "node": "node-1", "job": SCRAPE_JOB}},
    ]
    # A replica heard again under a new endpoint is listed once, at the new one.
    targets.seen("replica-a", "10.0.0.3:9100", "node-3")
    groups = targets.groups()
    assert [g["labels"]["replica"] for g in groups] == ["replica-a", "replica-b", "replica-c"]
    assert groups[0] == {"targets": ["10.0.0.3:9100"],
                         "labels": {"replica": "replica-a", "node": "node-3",
                                    "job": SCRAPE_JOB}}


def test_scrape_targets_drop_a_replica_not_heard_from_for_the_ttl() -> None:
    clock = _Clock()
    targets = ScrapeTargets(ttl_s=75, clock=clock)
    targets.seen("old", "h:1", "n")
    clock.now += 50
    targets.seen("new", "h:2", "n")
    clock.now += 25  # "old" is exactly ttl_s old: still listed
    assert [g["labels"]["replica"] for g in targets.groups()] == ["new", "old"]
    clock.now += 0.001
    assert [g["labels"]["replica"] for g in targets.groups()] == ["new"]
    targets.seen("old", "h:1", "n")  # back: listed again
    assert [g["labels"]["replica"] for g in targets.groups()] == ["new", "old"]
    clock.now += 76
    assert targets.groups() == []


def test_scrape_targets_write_only_on_change_atomically(tmp_path: Path) -> None:
    clock = _Clock()
    targets = ScrapeTargets(ttl_s=10, clock=clock)
    path = tmp_path / "prometheus" / "targets.json"
    assert targets.write(path) is True  # an empty list is still a file to read
    assert json.loads(path.read_text()) == []
    targets.seen("r1", "127.0.0.1:9000", "n1")
    assert targets.write(path) is True
    assert json.loads(path.read_text()) == targets.groups()
    # Unchanged: the file is left alone (this marker would be overwritten).
    path.write_text("untouched")
    clock.now += 5
    targets.seen("r1", "127.0.0.1:9000", "n1")  # heard again, same target
    assert targets.write(path) is False
    assert path.read_text() == "untouched"
    targets.seen("r2", "127.0.0.1:9001", "n2")
    assert targets.write(path) is True
    assert [g["labels"]["replica"] for g in json.loads(path.read_text())] == ["r1", "r2"]
    clock.now += 11  # both expire
    assert targets.write(path) is True
    assert json.loads(path.read_text()) == []
    assert [p.name for p in path.parent.iterdir()] == ["targets.json"]  # no temp file left


def _promtool_check(tmp_path: Path, sd_file: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [
        {"job_name": SCRAPE_JOB, "file_sd_configs": [{"files": [str(sd_file)]}]}]}))
    return subprocess.run(["promtool", "check", "config", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_promtool_accepts_the_written_file_sd_targets(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not on PATH")
    targets = ScrapeTargets(clock=_Clock())
    targets.seen("SERVE_REPLICA::rampart#RampartGateway#abc", "10.0.0.1:40001", "a" * 56)
    targets.seen("SERVE_REPLICA::rampart#RampartGateway#def", "10.0.0.2:40002", "b" * 56)
    sd_file = tmp_path / "sd" / "targets.json"
    assert targets.write(sd_file)
    result = _promtool_check(tmp_path, sd_file)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool does read the file: a broken one fails the same check.
    sd_file.write_text('[{"targets": ["10.0.0.1:1"], "labels": {"bad-label": "x"}}]')
    assert _promtool_check(tmp_path, sd_file).returncode != 0


# --------------------------------------------------------------------------- controller


def test_builtin_refusal_only_on_more_than_one_node() -> None:
    assert builtin_refusal(0) is None
    assert builtin_refusal(1) is None
    for nodes in (2, 7):
        reason = builtin_refusal(nodes)
        assert reason is not None
        assert f"{nodes} nodes" in reason
        assert "prometheus" in reason


def test_config_digest_identifies_config_store_and_tracking() -> None:
    base = config_digest(_config(), "sqlite:///a.db", "sqlite:///m.db")
    assert base == config_digest(_config(), "sqlite:///a.db", "sqlite:///m.db")
    assert base == config_digest(parse_config(_config().model_dump(mode="json")),
                                 "sqlite:///a.db", "sqlite:///m.db")
    others = {
        config_digest(_config(num_replicas=2), "sqlite:///a.db", "sqlite:///m.db"),
        config_digest(_config(max_replicas_per_node=1), "sqlite:///a.db", "sqlite:///m.db"),
        config_digest(_config(), "sqlite:///b.db", "sqlite:///m.db"),
        config_digest(_config(), "sqlite:///a.db", "sqlite:///n.db"),
        # The same text moved between store and tracking is another setup.
        config_digest(_config(), "sqlite:///m.db", "sqlite:///a.db"),
    }
    assert base not in others
    assert len(others) == 5


# --------------------------------------------------------------------------- metrics


_WRITER = """
    import os, sys
    from telemetry.metrics import RequestMetrics
    metrics = RequestMetrics(registry=None)
    labels = ("m", "1", "", "", "", "", "ok")
    for _ in range(int(sys.argv[1])):
        metrics.observe(labels, 0.01)
    print(os.getpid(), flush=True)
    if sys.argv[2] == "serve":
        from pathlib import Path
        from telemetry.metrics import ReplicaMetricsServer
        server = ReplicaMetricsServer("127.0.0.1", Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        print(server.endpoint, flush=True)
        sys.stdin.readline()  # the test has scraped
        server.close()
        print("closed", flush=True)
        sys.stdin.readline()  # the test has seen the port closed
"""


def _requests_total(metrics: Any) -> float:
    return float(sum(sample.value for metric in metrics for sample in metric.samples
                     if sample.name == "rampart_requests_total"))


def _scraped_requests_total(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rampart_requests_total{"))


def test_each_process_serves_only_its_own_samples(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = tmp_path / "metrics"
    directory.mkdir()
    env = _child_env(**{MULTIPROC_ENV: str(directory)})
    code = textwrap.dedent(_WRITER)
    quiet = _run_python(code, env, "3", "exit")
    assert quiet.returncode == 0, quiet.stderr
    quiet_pid = int(quiet.stdout.split()[0])

    server = subprocess.Popen([sys.executable, "-c", code, "5", "serve"], env=env, cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdin is not None
        server_pid = int(server.stdout.readline())
        endpoint = server.stdout.readline().strip()
        assert endpoint.startswith("127.0.0.1:") and server_pid == server.pid

        # Both wrote to the one directory: together they count 8 ...
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        assert _requests_total(registry.collect()) == 8
        # ... each process's collector exactly its own.
        assert _requests_total(ProcessMetricsCollector(directory, quiet_pid).collect()) == 3
        assert _requests_total(ProcessMetricsCollector(directory, server_pid).collect()) == 5
        assert _requests_total(ProcessMetricsCollector(directory, 999_999_999).collect()) == 0

        response = httpx.get(f"http://{endpoint}/metrics", timeout=30)
        assert response.status_code == 200
        assert _scraped_requests_total(response.text) == 5
        assert "rampart_request_latency_seconds_count" in response.text

        server.stdin.write("scraped\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "closed"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{endpoint}/metrics", timeout=30)
        server.stdin.write("done\n")
        server.stdin.flush()
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for stream in (server.stdin, server.stdout):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------------- Serve app args


def test_build_args_take_config_and_num_replicas_and_refuse_others() -> None:
    assert BuildArgs.model_validate({}) == BuildArgs(config=None, num_replicas=None)
    args = BuildArgs.model_validate({"config": "deploy/rampart.yaml", "num_replicas": 3})
    assert args.config == Path("deploy/rampart.yaml")
    assert args.num_replicas == 3
    with pytest.raises(ValidationError) as err:
        BuildArgs.model_validate({"config": "deploy/rampart.yaml", "replicas": 3})
    assert "replicas" in str(err.value)
    assert err.value.errors()[0]["type"] == "extra_forbidden"


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # main() sets this default; keep it from outliving the test.
    monkeypatch.setenv("RAY_DEDUP_LOGS", os.environ.get("RAY_DEDUP_LOGS", "0"))


@pytest.mark.usefixtures("no_ray_address")
def test_serve_detach_needs_an_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--detach"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("rampart: error: --detach needs --address")


@pytest.mark.usefixtures("no_ray_address")
def test_serve_shutdown_needs_an_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--shutdown"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("rampart: error: --shutdown needs --address")


def test_stop_without_a_cluster_is_one_error_line_at_once(tmp_path: Path) -> None:
    """Ray itself would retry a missing cluster for minutes (20 attempts of some
    36 s each): rampart checks the address answers first. Ray's own waits are
    left as they are, so a hang shows as this test's timeout."""
    env = _child_env()
    assert "RAY_ADDRESS" not in env
    result = _run_python("""
        import sys
        from serving.cli.main import main
        sys.exit(main(["stop", "--address", "127.0.0.1:1"]))
    """, env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "rampart: error: no Ray cluster at 127.0.0.1:1: nothing answers at 127.0.0.1:1 "
        "(Connection refused)"]
    assert result.stdout == ""


@pytest.mark.parametrize("address", ["ray://127.0.0.1:1", "not-an-address"])
def test_serve_on_an_unreachable_cluster_is_one_error_line(address: str) -> None:
    env = _child_env()
    result = _run_python(f"""
        import sys
        from serving.cli.main import main
        sys.exit(main(["serve", "--address", {address!r}, "--detach"]))
    """, env, timeout=60)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"rampart: error: cannot join the Ray cluster at {address}")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_replica_metrics_stay_on_loopback_when_the_gateway_does(host: str) -> None:
    from serving.gateway.ray_app import metrics_bind_host

    assert metrics_bind_host(host) == "127.0.0.1"


def test_replica_metrics_listen_on_the_node_address_when_the_gateway_is_public() -> None:
    import ipaddress

    from serving.gateway.ray_app import metrics_bind_host

    address = ipaddress.ip_address(metrics_bind_host("0.0.0.0"))
    assert not address.is_loopback and not address.is_unspecified


def test_stale_haproxy_directories_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    from serving.gateway.ray_app import HAPROXY_DIR_PREFIX, remove_stale_haproxy_dirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f"{HAPROXY_DIR_PREFIX}stale"
    stale.mkdir()
    (stale / "owner.pid").write_text(dead.stdout.strip())
    orphan = tmp_path / f"{HAPROXY_DIR_PREFIX}orphan"  # from before owner files existed
    (orphan / "abc").mkdir(parents=True)
    live = tmp_path / f"{HAPROXY_DIR_PREFIX}live"
    live.mkdir()
    (live / "owner.pid").write_text(str(os.getpid()))
    other = tmp_path / "someone-else"
    other.mkdir()
    assert sorted(remove_stale_haproxy_dirs(tmp_path)) == sorted([stale, orphan])
    assert live.exists() and other.exists() and not stale.exists() and not orphan.exists()


def test_a_gateways_own_ports_are_never_ones_the_kernel_hands_out() -> None:
    # Ray binds dozens of sockets to port 0 right after a gateway chooses its
    # HAProxy and fallback ports: chosen below the kernel's ephemeral range,
    # none of them can be handed to one of those.
    import socket

    floor = ephemeral_floor()
    assert floor is not None  # Linux: /proc/sys/net/ipv4/ip_local_port_range
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(20_000 <= port < floor for port in ports), (ports, floor)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
