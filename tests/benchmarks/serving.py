"""Serving benchmark: Rampart against other ways of serving the same model, for a
linear model and for a tree ensemble.

    .venv/bin/python tests/benchmarks/serving.py [--duration 10] [--servers a,b]
                                                 [--json-out FILE]

Seeds the demo registry (MLflow on SQLite in a fresh temporary directory),
then, one server at a time (the others stopped: the machine has few cores),
starts each of

* ``fastapi``: a plain uvicorn + FastAPI app calling ``predict_proba`` of the
  champion (a logistic regression);
* ``ray_serve_proxy``: the same handler on Ray Serve behind its default proxy;
* ``mlflow_serve``: ``mlflow models serve`` on the same version;
* ``rampart``: the gateway from ``deploy/rampart.yaml`` (champion/challenger
  90/10, decision log, metrics and spans on), which folds these versions into
  its inline fast path;
* ``tree_fastapi``, ``tree_mlflow_serve``: the first and third on the demo's
  ``tree`` version (a HistGradientBoostingClassifier), ``mlflow models serve
  -m models:/...@tree``;
* ``tree_rampart``: the gateway serving the ``tree`` version alone, as its
  default with no experiments (deploy/rampart.yaml otherwise, written to the
  temporary directory), scored in the replica's worker pool,

checks one answer of each against the model scored locally (Rampart's: several
hundred, and which versions answered), warms it up with wrk for a couple of
seconds and drives it with wrk at 1 and 8 connections, each server with its own
protocol's body for the same row (``/v1/predict``; mlflow serve's
``/invocations`` with ``dataframe_split``). Prints one JSON line per server and
connection count, the Rampart ratios of both rows at 8 and at 1 connection, and
one line with the environment and the goal checks.

Exit status: 0 if every run was clean, 1 if any failed (including any non-2xx
answer or socket error), 2 if wrk is missing, 130 on Ctrl-C.
"""

from __future__ import annotations

import os
import sys

# This script is ``serving.py``: put the project root first on the path so that
# ``serving`` means Rampart's package; this directory stays (for ``peers``).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from peers import (  # noqa: E402
    FEATURE_NAMES,
    FEATURE_VALUES,
    HERE,
    MODEL_NAME,
    SERVER_NAMES,
    PeerError,
    PeerSpec,
    RunningPeer,
    ensure_port_free,
    peer_specs,
)

WRK = "/usr/bin/wrk"
LUA_SCRIPT = HERE / "wrk_post.lua"
CONNECTIONS = ((1, 1), (8, 2))  # (connections, wrk threads)
WARMUP_CONNECTIONS, WARMUP_THREADS = 8, 2
WRK_REQUEST_TIMEOUT = "5s"
RAMPART_PROBE_UNITS = 400
CHAMPION_VERSION, CHALLENGER_VERSION = "1", "2"
UNIT_FACTORS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# --- wrk ---------------------------------------------------------------------------------


def _duration_ms(value: str, unit: str) -> float:
    return float(value) * UNIT_FACTORS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """req/s, p50, p99 (ms), non-2xx and socket errors from ``wrk --latency`` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    pct = {
        p: re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M) for p in (50, 99)
    }
    if rps is None or total is None or pct[50] is None or pct[99] is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "req_per_s": round(float(rps.group(1)), 1),
        "p50_ms": round(_duration_ms(pct[50].group(1), pct[50].group(2)), 3),
        "p99_ms": round(_duration_ms(pct[99].group(1), pct[99].group(2)), 3),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
        "requests": int(total.group(1)),
    }


def run_wrk(spec: PeerSpec, connections: int, threads: int, duration_s: int) -> dict[str, Any]:
    cmd = [
        WRK, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
        "--timeout", WRK_REQUEST_TIMEOUT, "-s", str(LUA_SCRIPT), spec.url, "--", spec.lua_mode,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"wrk did not finish within {duration_s + 30}s") from exc
    if done.returncode != 0:
        raise PeerError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout}")
    return parse_wrk(done.stdout)


def wrk_version() -> str:
    done = subprocess.run([WRK, "--version"], capture_output=True, text=True, timeout=10)
    return (done.stdout + done.stderr).splitlines()[0].strip()


# --- models ------------------------------------------------------------------------------


def seed_registry(work_dir: Path) -> tuple[str, dict[str, str], dict[str, dict[str, float]]]:
    """Seed the demo versions; return the tracking URI, the version of each alias
    and each version's local scores for the benchmark's feature row (``proba``
    and ``label``)."""
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import mlflow.sklearn
    import pandas as pd

    from serving.cli.demo.models import seed_demo_models

    uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    seeded = seed_demo_models(uri, work_dir / "artifacts")
    wanted = {"champion": CHAMPION_VERSION, "challenger": CHALLENGER_VERSION}
    if seeded.model_name != MODEL_NAME or "tree" not in seeded.versions or any(
            seeded.versions.get(alias) != version for alias, version in wanted.items()):
        raise PeerError(f"unexpected seed result: {seeded}")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    row = pd.DataFrame([list(FEATURE_VALUES)], columns=list(FEATURE_NAMES))
    expected = {}
    for version in sorted(set(seeded.versions.values())):
        model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/{version}")
        expected[version] = {
            "proba": float(model.predict_proba(row)[:, 1][0]),
            "label": float(model.predict(row)[0]),
        }
    return uri, dict(seeded.versions), expected


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def check_answers(peer: RunningPeer, aliases: dict[str, str],
                  expected: dict[str, dict[str, float]]) -> dict[str, Any]:
    """One scored answer must match the model scored here; for Rampart, several
    hundred, each from a version the row may route to, and the split."""
    spec = peer.spec
    name = spec.name
    served = aliases[spec.alias]
    status, payload = peer.post(spec.body("check-0"))
    if status != 200:
        raise PeerError(f"{name}: HTTP {status}: {payload[:300]!r}")
    answer = json.loads(payload)
    if spec.answers != "routed":
        # mlflow serve answers pyfunc predict (the class label), the others P(class 1).
        if spec.answers == "label":
            got, want = float(answer["predictions"][0]), expected[served]["label"]
        else:
            got, want = float(answer["prediction"]), expected[served]["proba"]
        if not _close(got, want):
            raise PeerError(f"{name}: predicted {got}, expected {want} "
                            f"(version {served}, {spec.alias})")
        return {"prediction": got, "version": served}
    # With the experiment, the control's and the challenger's answers; else the default's.
    allowed = {served, aliases["challenger"]} if spec.challenger_share else {served}
    versions: dict[str, int] = {}
    for i in range(RAMPART_PROBE_UNITS):
        status, payload = peer.post(peer.spec.body(f"probe-{i}"))
        if status != 200:
            raise PeerError(f"{name}: HTTP {status}: {payload[:300]!r}")
        answer = json.loads(payload)
        version = str(answer["model_version"])
        if version not in allowed or not _close(answer["prediction"], expected[version]["proba"]):
            raise PeerError(f"{name}: unexpected answer {answer}")
        versions[version] = versions.get(version, 0) + 1
    if spec.challenger_share is None:
        return {"answers_by_version": versions}
    share = versions.get(CHALLENGER_VERSION, 0) / RAMPART_PROBE_UNITS
    low, high = spec.challenger_share
    if not low <= share <= high:
        raise PeerError(f"{name}: challenger share {share:.3f} over {versions}, "
                        f"expected within [{low}, {high}]")
    return {"answers_by_version": versions, "challenger_share": share}


# --- one server ----------------------------------------------------------------------------


def bench_server(
    spec: PeerSpec, work_dir: Path, aliases: dict[str, str],
    expected: dict[str, dict[str, float]], duration_s: int, warmup_s: int,
    records: list[dict[str, Any]],
) -> None:
    """Start, check, warm up, measure, stop one server; appends one record per
    connection count to ``records``."""
    started = time.monotonic()
    for port in (spec.port, *spec.extra_ports):
        ensure_port_free(port)
    log(f"{spec.name}: starting on port {spec.port} ({spec.note})")
    peer = RunningPeer(spec, work_dir / "logs" / f"{spec.name}.log")
    try:
        peer.wait_ready()
        log(f"{spec.name}: ready after {time.monotonic() - started:.1f}s")
        check = check_answers(peer, aliases, expected)
        log(f"{spec.name}: answers check out: {check}")
        if warmup_s > 0:
            warm = run_wrk(spec, WARMUP_CONNECTIONS, WARMUP_THREADS, warmup_s)
            log(f"{spec.name}: warm-up {warm['req_per_s']} req/s, non-2xx {warm['non_2xx']}")
            if warm["non_2xx"] or warm["socket_errors"]:
                raise PeerError(f"{spec.name}: warm-up had failures: {warm}")
        for connections, threads in CONNECTIONS:
            result = run_wrk(spec, connections, threads, duration_s)
            failures = []
            if result["non_2xx"]:
                failures.append(f"{result['non_2xx']} non-2xx responses")
            if result["socket_errors"]:
                failures.append(f"{result['socket_errors']} socket errors")
            record: dict[str, Any] = {
                "server": spec.name,
                "connections": connections,
                "req_per_s": result["req_per_s"],
                "p50_ms": result["p50_ms"],
                "p99_ms": result["p99_ms"],
                "non_2xx": result["non_2xx"],
            }
            if failures:
                record["error"] = "; ".join(failures)
            emit(record)
            records.append(
                dict(record, socket_errors=result["socket_errors"], requests=result["requests"],
                     duration_s=duration_s, check=check)
            )
    finally:
        survivors = peer.stop()
        if survivors:
            log(f"{spec.name}: WARNING processes survived the stop: {survivors}")
        else:
            log(f"{spec.name}: stopped, no processes left")


# --- summary -----------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratios(results: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    ok = {
        r["server"]: r for r in results
        if r["connections"] == connections and "error" not in r and r["req_per_s"] is not None
    }

    def get(server: str, key: str) -> float | None:
        return ok[server][key] if server in ok else None

    rampart_rps = get("rampart", "req_per_s")
    tree_rps = get("tree_rampart", "req_per_s")
    return {
        "ratios_at_connections": connections,
        "rampart_vs_ray_serve_proxy_throughput": _ratio(rampart_rps,
                                                        get("ray_serve_proxy", "req_per_s")),
        "rampart_vs_fastapi_throughput": _ratio(rampart_rps, get("fastapi", "req_per_s")),
        "rampart_vs_fastapi_p99": _ratio(get("rampart", "p99_ms"), get("fastapi", "p99_ms")),
        "rampart_vs_mlflow_serve_throughput": _ratio(rampart_rps,
                                                     get("mlflow_serve", "req_per_s")),
        "tree_rampart_vs_mlflow_serve_throughput": _ratio(
            tree_rps, get("tree_mlflow_serve", "req_per_s")),
        "tree_rampart_vs_fastapi_throughput": _ratio(tree_rps,
                                                     get("tree_fastapi", "req_per_s")),
        "tree_rampart_vs_fastapi_p99": _ratio(get("tree_rampart", "p99_ms"),
                                              get("tree_fastapi", "p99_ms")),
        "tree_rampart_vs_mlflow_serve_p99": _ratio(get("tree_rampart", "p99_ms"),
                                                   get("tree_mlflow_serve", "p99_ms")),
    }


def environment_and_goals(ratios_8: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    def goal(value: float | None, ok: bool) -> bool | None:
        return None if value is None else ok

    vs_ray = ratios_8["rampart_vs_ray_serve_proxy_throughput"]
    vs_fastapi = ratios_8["rampart_vs_fastapi_throughput"]
    p99 = ratios_8["rampart_vs_fastapi_p99"]
    tree_vs_mlflow = ratios_8["tree_rampart_vs_mlflow_serve_throughput"]
    env = {}
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env[f"{key}_set"] = key in os.environ
        env[key] = os.environ.get(key)
    return {
        **env,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mode": "sequential: one server running at a time, the others stopped",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "wrk": wrk_version(),
        "goal_connections": 8,
        "goal_5x_ray_serve": goal(vs_ray, vs_ray is not None and vs_ray >= 5.0),
        "goal_0_8x_fastapi": goal(vs_fastapi, vs_fastapi is not None and vs_fastapi >= 0.8),
        # The folded fast path must not fall behind the plain app it replaces.
        "goal_1x_fastapi": goal(vs_fastapi, vs_fastapi is not None and vs_fastapi >= 1.0),
        "goal_p99_2x_fastapi": goal(p99, p99 is not None and p99 <= 2.0),
        "goal_tree_3x_mlflow_serve": goal(tree_vs_mlflow, tree_vs_mlflow is not None
                                          and tree_vs_mlflow >= 3.0),
    }


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per server (2)")
    parser.add_argument("--servers", default=",".join(SERVER_NAMES),
                        help=f"comma list, a subset of {','.join(SERVER_NAMES)}")
    parser.add_argument("--json-out", type=Path, help="also write every result to this file")
    parser.add_argument("--port-base", type=int, default=18001,
                        help=f"servers use this port and the next {len(SERVER_NAMES) - 1}; "
                             "Rampart's HAProxy stats and metrics also +10 and +11 (18001)")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temporary directory (registry, logs)")
    args = parser.parse_args(argv)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.server_list if s not in SERVER_NAMES]
    if unknown or not args.server_list:
        parser.error(f"--servers: unknown {unknown}; choose from {', '.join(SERVER_NAMES)}")
    if args.duration < 1 or args.warmup < 0:
        parser.error("--duration must be >= 1 and --warmup >= 0")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (os.path.isfile(WRK) and os.access(WRK, os.X_OK)):
        print(f"wrk not found at {WRK}: install it with `make system-deps` "
              "(or `apt-get install wrk`)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    work_dir = Path(tempfile.mkdtemp(prefix="rampart-bench-"))
    results: list[dict[str, Any]] = []
    failed = False
    try:
        log(f"seeding the demo registry under {work_dir}")
        uri, aliases, expected = seed_registry(work_dir)
        log(f"versions: {aliases}")
        specs = peer_specs(uri, work_dir, args.port_base)
        for name in args.server_list:
            try:
                bench_server(specs[name], work_dir, aliases, expected, args.duration,
                             args.warmup, results)
            except PeerError as exc:
                failed = True
                log(f"{name}: FAILED: {exc}")
                for connections, _ in CONNECTIONS:
                    if any(r["server"] == name and r["connections"] == connections
                           for r in results):
                        continue
                    record = {"server": name, "connections": connections, "req_per_s": None,
                              "p50_ms": None, "p99_ms": None, "non_2xx": None,
                              "error": str(exc).splitlines()[0]}
                    emit(record)
                    results.append(record)
                continue
        failed = failed or any("error" in r for r in results)
        summary = [ratios(results, 8), ratios(results, 1)]
        for line in summary:
            emit(line)
        env = environment_and_goals(summary[0], args)
        emit(env)
        if args.json_out:
            args.json_out.write_text(json.dumps(
                {"results": results, "ratios": summary, "environment": env,
                 "servers": {n: specs[n].note for n in args.server_list}}, indent=2) + "\n")
            log(f"wrote {args.json_out}")
    except KeyboardInterrupt:
        log("interrupted: servers stopped")
        return 130
    finally:
        if args.keep_tmp:
            log(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
