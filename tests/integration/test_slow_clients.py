"""Slow clients cannot take the gateway down: 300 connections sending a request
body a byte a second and 4,200 sending their headers so, all from one source
address, leave a normal client's p99 latency within twice what it is without them (the
mean of the quiet p99s just before and just after the attack), and
``/healthz`` answering throughout.

The gateway runs as ``rampart serve`` (its own local Ray and HAProxy, which
take the read deadline and per-source limit from the config at start) with a
2 s read deadline. The attackers run in a child process of low priority,
bound to 127.0.0.2: the per-source limit applies to them, not to the normal
client on 127.0.0.1, and on a two-core machine their own CPU (which a real
attacker spends on machines of its own) does not count against the gateway.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.gateway_processes import haproxy_configs, healthy
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RAMPART = Path(sys.executable).with_name("rampart")
READ_TIMEOUT_S = 2
PER_SOURCE = 1000
SLOW_BODIES, SLOW_HEADERS, LONG_BODIES = 300, 4200, 20
ATTACK_S = 20
MEASURED = 1000
ROW = {"unit_id": "user-1", "features": {f"f{k}": 0.1 * k for k in range(8)}}

# The attackers: each connection sends a byte a second until the server ends
# it, then comes back; one refused at accept (closed at once, nothing answered)
# comes back after a growing pause, as a client that backs off would.
ATTACK = r"""
import asyncio, json, os, sys, time

host, port = sys.argv[1], int(sys.argv[2])
bodies, headers, longs, seconds = (int(a) for a in sys.argv[3:7])
os.nice(19)
counts = {"connections": 0, "answered_408": 0, "closed_by_server": 0, "refused": 0,
          "open_max": 0}
open_now = 0
stop_at = time.monotonic() + seconds
BODY_HEAD = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n")

def start(kind):
    if kind == "header":
        return b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 600
    if kind == "body":
        return BODY_HEAD % 600, b" " * 600
    # Longer than HAProxy's buffer: it passes the request on to a replica,
    # whose own deadline must end it.
    return BODY_HEAD % 200000 + b" " * 65536, b" " * 600

async def attacker(kind, delay):
    global open_now
    await asyncio.sleep(delay)
    backoff = 0.5
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(
                host, port, local_addr=("127.0.0.2", 0))
        except OSError:
            counts["refused"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 8)
            continue
        counts["connections"] += 1
        open_now += 1
        counts["open_max"] = max(counts["open_max"], open_now)
        opened = time.monotonic()
        answer = asyncio.ensure_future(reader.read(4096))
        first, rest = start(kind)
        try:
            writer.write(first)
            for i in range(len(rest)):
                await asyncio.sleep(1)
                if answer.done() or time.monotonic() > stop_at:
                    break
                writer.write(rest[i:i + 1])
        except OSError:
            pass
        if time.monotonic() <= stop_at:
            try:
                data = await asyncio.wait_for(answer, 2)
            except Exception:
                data = b""
        else:
            answer.cancel()
            data = None
        open_now -= 1
        writer.close()
        if data is None:
            break
        if data.startswith(b"HTTP/1.1 408"):
            counts["answered_408"] += 1
        elif not data and time.monotonic() - opened < 1.5:
            counts["refused"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 8)
            continue
        else:
            counts["closed_by_server"] += 1
        backoff = 0.5

async def main():
    # Spread the connects over two seconds, as a crowd of clients would arrive.
    kinds = ["body"] * bodies + ["long"] * longs + ["header"] * headers
    tasks = [attacker(k, 2 * i / len(kinds)) for i, k in enumerate(kinds)]
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(counts), flush=True)

asyncio.run(main())
"""


def _config(tmp: Path, tracking_uri: str) -> tuple[Path, str]:
    data = yaml.safe_load((ROOT / "deploy" / "rampart.yaml").read_text())
    data.update(tracking_uri=tracking_uri, data_dir=str(tmp))
    data["decision_log"] = {"path": str(tmp / "decisions"), "flush_interval_s": 0.5}
    data["telemetry"] = {"metrics_dir": str(tmp / "metrics")}
    port = free_port()
    data["server"] = {"host": "127.0.0.1", "port": port, "num_replicas": 1,
                      "request_read_timeout_s": READ_TIMEOUT_S,
                      "max_connections_per_source": PER_SOURCE}
    (tmp / "rampart.yaml").write_text(yaml.safe_dump(data))
    return tmp / "rampart.yaml", f"http://127.0.0.1:{port}"


def stats_port(pid: int) -> int:
    """The port HAProxy ``pid`` serves its stats on (it listens on loopback only)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # listening
            address, port = fields[1].split(":")
            assert address == "0100007F", line  # 127.0.0.1
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"http://127.0.0.1:{int(port, 16)}/stats;csv", timeout=5)
                if "pxname" in answer.text:
                    return int(port, 16)
    raise AssertionError(f"HAProxy {pid} serves no stats on loopback")


def frontend_stats(port: int) -> dict[str, str]:
    rows = httpx.get(f"http://127.0.0.1:{port}/stats;csv", timeout=5).text.splitlines()
    names = rows[0].lstrip("# ").split(",")
    for row in rows[1:]:
        values = dict(zip(names, row.split(","), strict=False))
        if values["pxname"] == "http_frontend" and values["svname"] == "FRONTEND":
            return values
    raise AssertionError("no http_frontend row in HAProxy's stats")


WINDOW = 100  # requests a window


def p99(client: httpx.Client, count: int) -> tuple[float, float]:
    """The typical p99 of ``count`` requests in a row: the median of the p99s of
    their windows of :data:`WINDOW` requests. On two shared cores one stall of
    the machine (a neighbour, a page-cache flush) delays the few requests in
    flight and alone sets a plain p99 of a thousand requests; runs of the same
    code gave quiet p99s from 3.8 to 7.1 ms. The median of the windows still
    moves with any lasting slowdown, which is what slow clients would cause
    (the soak test judges its minutes the same way). Returned with the plain
    p99, which is printed."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        answer = client.post("/v1/predict", json=ROW)
        latencies.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    windows = [sorted(latencies[i:i + WINDOW]) for i in range(0, count - WINDOW + 1, WINDOW)]
    plain = sorted(latencies)[int(0.99 * (count - 1))]
    return statistics.median(w[int(0.99 * (len(w) - 1))] for w in windows), plain


class HealthWatch(threading.Thread):
    """Asks ``/healthz`` five times a second; keeps every failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.asked = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self.stopping.wait(0.2):
                self.asked += 1
                try:
                    answer = client.get(f"{self.url}/healthz")
                    if answer.status_code != 200:
                        self.failures.append(f"{answer.status_code} {answer.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))


def read_timeouts_counted(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(r"^rampart_request_read_timeouts_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_slow_clients_leave_p99_within_twice_and_healthz_answering(
    mlflow_store: dict[str, Any], tmp_path: Path
) -> None:
    config, url = _config(tmp_path, str(mlflow_store["uri"]))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_SERVE_HAPROXY", "RAY_ADDRESS"))}
    serve = subprocess.Popen([str(RAMPART), "serve", "--config", str(config)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    attack: subprocess.Popen[str] | None = None
    watch = HealthWatch(url)
    try:
        deadline = time.monotonic() + 180
        while not healthy(url):
            assert serve.poll() is None and time.monotonic() < deadline, "no gateway came up"
            time.sleep(0.5)
        instance = json.loads((tmp_path / "serve.json").read_text())["instance"]
        stats = stats_port(max(haproxy_configs(instance)))
        before = frontend_stats(stats)

        # /healthz is asked throughout, before the attack too: both p99s are
        # measured alongside the same watch.
        watch.start()
        with httpx.Client(base_url=url, timeout=30) as client:
            p99(client, 100)  # warm up: connections, caches
            quiet_p99, quiet_plain = p99(client, MEASURED)

            attack = subprocess.Popen(
                [sys.executable, "-c", ATTACK, "127.0.0.1", url.rsplit(":", 1)[1],
                 str(SLOW_BODIES), str(SLOW_HEADERS), str(LONG_BODIES), str(ATTACK_S)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # Measure once the crowd is in: HAProxy holds as many of its
            # connections as the per-source limit lets it.
            ramp = time.monotonic() + 10
            while int(frontend_stats(stats)["scur"]) < PER_SOURCE * 0.9:
                assert time.monotonic() < ramp, frontend_stats(stats)["scur"]
                time.sleep(0.2)
            held = int(frontend_stats(stats)["scur"])
            attacked_p99, attacked_plain = p99(client, MEASURED)
            out, err = attack.communicate(timeout=ATTACK_S + 30)
            # Quiet again once the attack is over: the reference is the mean of the
            # quiet p99s on either side of it, so a machine that drifts faster or
            # slower over the run (a neighbour) moves the reference with it.
            after_p99, after_plain = p99(client, MEASURED)
        quiet_ref = (quiet_p99 + after_p99) / 2
        watch.stopping.set()
        watch.join()
        assert attack.returncode == 0, err
        counts = json.loads(out)
        after = frontend_stats(stats)
        counted = read_timeouts_counted(url)
    finally:
        watch.stopping.set()
        if attack is not None and attack.poll() is None:
            attack.kill()  # its sockets close with it
            attack.wait()
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        output = serve.communicate(timeout=120)[0]
    print(f"p99 (median of {WINDOW}-request windows) quiet {quiet_p99 * 1000:.2f} ms, under "
          f"attack {attacked_p99 * 1000:.2f} ms, quiet again {after_p99 * 1000:.2f} ms (ratio "
          f"to the quiet mean {attacked_p99 / quiet_ref:.2f}); plain p99 "
          f"{quiet_plain * 1000:.2f} -> {attacked_plain * 1000:.2f} -> "
          f"{after_plain * 1000:.2f} ms; HAProxy held "
          f"{held} attack connections; "
          f"attack: {counts}; HAProxy: {int(after['dcon']) - int(before['dcon'])} refused at "
          f"accept, {int(after['ereq']) - int(before['ereq'])} request errors, "
          f"{int(after['hrsp_4xx']) - int(before['hrsp_4xx'])} 4xx; gateway read timeouts "
          f"{counted:g}; healthz asked {watch.asked} times")
    assert serve.returncode == 0, output
    # The acceptance criterion, measured in one run.
    assert attacked_p99 <= 2 * quiet_ref, (quiet_p99, attacked_p99, after_p99)
    assert watch.asked >= 10 and watch.failures == []
    # The attack was real, and the deadlines and the limit cut it off.
    assert counts["connections"] >= SLOW_BODIES + SLOW_HEADERS
    assert counts["answered_408"] >= SLOW_BODIES + PER_SOURCE // 2
    assert int(after["dcon"]) - int(before["dcon"]) >= SLOW_HEADERS - PER_SOURCE
    assert int(after["ereq"]) - int(before["ereq"]) >= SLOW_BODIES
    # Bodies longer than HAProxy buffers reach a replica: its own deadline ends them.
    assert counted >= LONG_BODIES


pytestmark = pytest.mark.timeout(300)
