"""Slow-model benchmark: a model that takes 50 ms does not stall requests for a 50 µs
model on the same replica.

    .venv/bin/python tests/benchmarks/slow_model.py [--duration 10] [--slow-ms 50]
                                                    [--json-out FILE]

Logs two versions of one model to MLflow on SQLite in a fresh temporary directory:
version 1, a logistic regression on ``f0..f7`` (folded into the inline fast path,
microseconds), and version 2, a custom pyfunc ``PythonModel`` on the same columns
whose ``predict`` sleeps ``--slow-ms`` and answers each row's sum. One experiment
splits units 50/50 between them, so a unit id picks the version.

The replica is what a Ray Serve replica of Rampart runs, without Ray: the FastAPI app
from :func:`serving.gateway.core.build_app` over a :class:`GatewayCore` built by
:func:`serving.gateway.ray_app.build_core` (decision log, metrics, spans, shadow
runner, worker pool and unit policy from the config), under uvicorn in a subprocess
on loopback, access log off. The property measured is one process's event loop;
Ray's HAProxy in front would add a hop and Ray's own processes would share the two
cores with it, noise on the same figures rather than part of them.

Three runs, each a wrk client posting one fixed unit routed to the fast version
(8 connections) for ``--duration`` seconds:

* ``fast_alone``: nothing else;
* ``fast_with_slow_pool``: a second wrk client (8 connections) posts a unit routed
  to the slow version throughout, which the replica scores in its worker pool
  (the product's default for any version that is not folded);
* ``fast_with_slow_inline``: the same, on a replica whose slow scorer claims to be
  inline, so it is scored on the event loop: what the pool prevents.

Each answer is checked against the model scored here before timing. Prints one
JSON line per run, the ratios (fast p99 with slow traffic over fast p99 alone, and
the same for p50 and throughput, pool and inline), and one line with the environment.

Exit status: 0 if every run was clean (no non-2xx answer, no socket error), 1
otherwise, 2 if wrk is missing, 130 on Ctrl-C.
"""

from __future__ import annotations

import os
import sys

# This directory holds the benchmark script ``serving.py``; keep ``serving``
# meaning Rampart's package, here and in the replica subprocess.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
sys.path.append(_HERE)  # after the repository root: for ``peers``

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from mlflow.pyfunc import PythonModel  # noqa: E402
from peers import serving_benchmark  # noqa: E402

MODEL_NAME = "rampart-slow-bench"
FAST_VERSION, SLOW_VERSION = "1", "2"
FEATURE_NAMES = tuple(f"f{i}" for i in range(8))
FEATURE_VALUES = (0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.8, 0.05)
CONNECTIONS, THREADS = 8, 2  # the fast client, as in the serving benchmark
SLOW_CONNECTIONS = 8
WARMUP_S = 2
WRK_REQUEST_TIMEOUT = "10s"
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
MAX_PROBE_UNITS = 200


def log(message: str) -> None:
    print(f"[slow-model] {message}", file=sys.stderr, flush=True)


def emit(record: Mapping[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# --- the slow version ----------------------------------------------------------------


class SleepingModel(PythonModel):
    """Sleeps ``delay_s`` per call, then answers each row's sum: a model whose time
    goes to waiting (a remote feature store, a big ensemble in native code)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        time.sleep(self.delay_s)
        return np.asarray(model_input.sum(axis=1), dtype=np.float64)


def log_versions(tracking_uri: str, artifacts: Path, slow_s: float) -> float:
    """Register the fast (1) and slow (2) versions; return the fast version's local
    P(class 1) for the benchmark's row."""
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from serving.cli.demo.models import make_training_data

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "rampart-slow-bench", artifact_location=artifacts.resolve().as_uri()))
    x, y = make_training_data(2_000, 1)
    frame = pd.DataFrame(x, columns=list(FEATURE_NAMES))
    fast = LogisticRegression(C=0.05, max_iter=500).fit(frame, y)
    with mlflow.start_run(run_name="fast"):
        # Requirements given, so MLflow does not infer them in a subprocess.
        info = mlflow.sklearn.log_model(
            fast, name="model", signature=infer_signature(frame, fast.predict_proba(frame)[:, 1]),
            pip_requirements=["mlflow", "scikit-learn"])
    mlflow.register_model(info.model_uri, MODEL_NAME)
    with mlflow.start_run(run_name="slow"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=SleepingModel(slow_s),
            signature=infer_signature(frame, frame.sum(axis=1).to_numpy()),
            pip_requirements=["mlflow", "pandas", "numpy"])
    mlflow.register_model(info.model_uri, MODEL_NAME)
    row = pd.DataFrame([list(FEATURE_VALUES)], columns=list(FEATURE_NAMES))
    return float(fast.predict_proba(row)[:, 1][0])


def write_config(path: Path, tracking_uri: str, run_dir: Path) -> None:
    arms = [{"name": "fast", "model": MODEL_NAME, "version": FAST_VERSION, "weight_bp": 5000},
            {"name": "slow", "model": MODEL_NAME, "version": SLOW_VERSION, "weight_bp": 5000}]
    data = {
        "tracking_uri": tracking_uri,
        "data_dir": str(run_dir),
        "models": [{"name": MODEL_NAME, "versions": [FAST_VERSION, SLOW_VERSION]}],
        "default": {"model": MODEL_NAME, "version": FAST_VERSION},
        "experiments": [{"id": "fast-vs-slow", "salt": "slow-model-bench", "unit": "user_id",
                         "arms": arms}],
        "decision_log": {"path": str(run_dir / "decisions")},
        "outcomes_log": {"path": str(run_dir / "outcomes")},
        "telemetry": {"metrics_dir": str(run_dir / "metrics")},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --- the replica (subprocess) ----------------------------------------------------------


class OnEventLoop:
    """A scorer that claims to be inline, so the request path scores it on the
    event loop: the slow version as it would run without the worker pool."""

    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer

    @property
    def inline(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)


def serve_replica(config_path: Path, port: int, slow_inline: bool) -> int:
    """One gateway replica under uvicorn until SIGTERM/SIGINT; flushes its logs on exit."""
    import uvicorn

    from models.registry import MlflowRegistry
    from serving.gateway.core import build_app
    from serving.gateway.ray_app import (
        ReplicaSettings,
        build_core,
        resolve_outcomes_path,
        resolve_paths,
    )
    from serving.kernel.config import parse_config
    from serving.routing.router import build_routing_table
    from serving.routing.snapshot import RoutingSnapshot
    from telemetry.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    cfg = parse_config(yaml.safe_load(config_path.read_text()), str(config_path))
    uri = cfg.resolved_tracking_uri()
    registry = MlflowRegistry(uri)
    decision_dir, metrics_dir = resolve_paths(cfg)
    decision_dir.mkdir(parents=True, exist_ok=True)
    # What the Ray deployment sets in each replica's environment.
    os.environ[MULTIPROC_ENV] = str(prepare_multiprocess_dir(metrics_dir))
    snapshot = RoutingSnapshot(build_routing_table(cfg, registry.resolve))
    settings = ReplicaSettings(config=cfg, tracking_uri=uri, decision_dir=decision_dir,
                               outcomes_dir=resolve_outcomes_path(cfg))
    outputs = cfg.model_outputs()

    def load(name: str, version: str) -> Any:
        scorer = registry.load(name, version, output=outputs.get(name, "auto"))
        return OnEventLoop(scorer) if slow_inline and not scorer.inline else scorer

    core = build_core(settings, snapshot, load)
    server = uvicorn.Server(uvicorn.Config(
        build_app(core), host="127.0.0.1", port=port, lifespan="off", access_log=False,
        log_level="warning"))
    try:
        server.run()
    finally:
        core.close()
    return 0


# --- the client side -------------------------------------------------------------------




def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(unit_id: str) -> bytes:
    features = dict(zip(FEATURE_NAMES, FEATURE_VALUES, strict=True))
    return json.dumps({"unit_id": unit_id, "features": features}).encode()


def write_lua(path: Path, unit_id: str) -> Path:
    """A wrk script posting one fixed body: every request is the same unit's."""
    text = body(unit_id).decode().replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.body = "{text}"\n')
    return path


class Replica:
    """The replica subprocess; always call :meth:`stop`."""

    def __init__(self, config: Path, port: int, slow_inline: bool, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.log_path = log_path
        argv = [sys.executable, os.path.abspath(__file__), "--serve", str(config),
                "--port", str(port)]
        if slow_inline:
            argv.append("--slow-inline")
        self.proc = subprocess.Popen(argv, cwd=_ROOT, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def post(self, payload: bytes, timeout_s: float = 10.0) -> tuple[int, dict[str, Any], float]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.url}/v1/predict", data=payload, method="POST",
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, json.loads(raw), time.perf_counter() - started

    def wait_ready(self) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the replica exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2.0) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the replica did not answer within {START_TIMEOUT_S:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def find_units(replica: Replica, fast_proba: float, slow_s: float) -> dict[str, str]:
    """A unit routed to each version, every answer checked against the local models."""
    units: dict[str, str] = {}
    want_slow = math.fsum(FEATURE_VALUES)
    for i in range(MAX_PROBE_UNITS):
        unit = f"unit-{i}"
        status, answer, elapsed = replica.post(body(unit))
        if status != 200:
            raise RuntimeError(f"HTTP {status} for {unit}: {answer}")
        version = str(answer["model_version"])
        if version == FAST_VERSION:
            want = fast_proba
        elif version == SLOW_VERSION:
            want = want_slow
            if elapsed < slow_s:
                raise RuntimeError(f"the slow version answered in {elapsed * 1e3:.1f} ms")
        else:
            raise RuntimeError(f"unexpected version in {answer}")
        if abs(float(answer["prediction"]) - want) > 1e-6 * max(1.0, abs(want)):
            raise RuntimeError(f"{unit}: predicted {answer['prediction']}, expected {want}")
        units.setdefault(version, unit)
        if len(units) == 2:
            return {"fast": units[FAST_VERSION], "slow": units[SLOW_VERSION]}
    raise RuntimeError(f"no unit for each version among {MAX_PROBE_UNITS}: {units}")


def parse_max_ms(output: str) -> float | None:
    """The slowest request (wrk's Latency line: avg, stdev, max)."""
    found = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", output, re.M)
    if found is None:
        return None
    return round(float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)], 3)


def start_wrk(bench: Any, url: str, script: Path, connections: int, threads: int,
              duration_s: int) -> subprocess.Popen[str]:
    cmd = [bench.WRK, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
           "--timeout", WRK_REQUEST_TIMEOUT, "-s", str(script), f"{url}/v1/predict"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(bench: Any, proc: subprocess.Popen[str], duration_s: int) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=duration_s + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("wrk did not finish") from None
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err.strip() or out}")
    result: dict[str, Any] = bench.parse_wrk(out)
    result["max_ms"] = parse_max_ms(out)
    return result


def measure(bench: Any, replica: Replica, scripts: Mapping[str, Path], duration_s: int,
            with_slow: bool) -> dict[str, Any]:
    """The fast client for ``duration_s``; with the slow client running from a second
    before it starts to a second after it ends."""
    slow = None
    if with_slow:
        slow = start_wrk(bench, replica.url, scripts["slow"], SLOW_CONNECTIONS, 1,
                         duration_s + 2)
        time.sleep(1.0)
    fast = finish_wrk(bench, start_wrk(bench, replica.url, scripts["fast"], CONNECTIONS,
                                       THREADS, duration_s), duration_s)
    record: dict[str, Any] = {"fast": fast, "slow": None}
    if slow is not None:
        record["slow"] = finish_wrk(bench, slow, duration_s + 2)
    return record


def run_on_replica(bench: Any, work: Path, config: Path, slow_inline: bool,
                   runs: Sequence[str], fast_proba: float, slow_s: float, duration_s: int,
                   ) -> list[dict[str, Any]]:
    mode = "inline" if slow_inline else "pool"
    port = free_port()
    log(f"replica ({mode}) starting on port {port}")
    replica = Replica(config, port, slow_inline, work / f"replica-{mode}.log")
    records = []
    try:
        replica.wait_ready()
        units = find_units(replica, fast_proba, slow_s)
        log(f"replica ({mode}) ready; units {units}, answers check out")
        scripts = {kind: write_lua(work / f"{kind}-{mode}.lua", unit)
                   for kind, unit in units.items()}
        warm = finish_wrk(bench, start_wrk(bench, replica.url, scripts["fast"], CONNECTIONS,
                                           THREADS, WARMUP_S), WARMUP_S)
        log(f"replica ({mode}) warm-up {warm['req_per_s']} req/s")
        for run in runs:
            with_slow = run != "fast_alone"
            result = measure(bench, replica, scripts, duration_s, with_slow)
            record = {"run": run, "slow_version_scored": mode if with_slow else None,
                      "fast_connections": CONNECTIONS,
                      "slow_connections": SLOW_CONNECTIONS if with_slow else 0,
                      "duration_s": duration_s, **result}
            failed = [k for k in ("fast", "slow") if record[k] is not None
                      and (record[k]["non_2xx"] or record[k]["socket_errors"])]
            if failed:
                record["error"] = f"non-2xx answers or socket errors: {failed}"
            emit(record)
            records.append(record)
    finally:
        replica.stop()
        log(f"replica ({mode}) stopped")
    return records


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--slow-ms", type=float, default=50.0,
                        help="the slow version's sleep per call (50)")
    parser.add_argument("--json-out", type=Path, help="also write every result to this file")
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slow-inline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return serve_replica(args.serve, args.port, args.slow_inline)
    if args.duration < 1 or args.slow_ms <= 0:
        parser.error("--duration must be >= 1 and --slow-ms > 0")
    bench = serving_benchmark()
    if not (os.path.isfile(bench.WRK) and os.access(bench.WRK, os.X_OK)):
        print(f"wrk not found at {bench.WRK}: run `make system-deps`", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    # Ends like Ctrl-C: the replica subprocess is stopped on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    slow_s = args.slow_ms / 1000.0
    work = Path(tempfile.mkdtemp(prefix="rampart-slow-model-"))
    try:
        uri = f"sqlite:///{work / 'mlflow.db'}"
        log(f"logging the fast and slow versions under {work}")
        fast_proba = log_versions(uri, work / "artifacts", slow_s)
        records = []
        for slow_inline, runs in ((False, ("fast_alone", "fast_with_slow_pool")),
                                  (True, ("fast_with_slow_inline",))):
            config = work / f"rampart-{'inline' if slow_inline else 'pool'}.yaml"
            write_config(config, uri, work / config.stem)
            records += run_on_replica(bench, work, config, slow_inline, runs, fast_proba,
                                      slow_s, args.duration)
        fast = {r["run"]: r["fast"] for r in records}
        alone = fast["fast_alone"]
        ratios: dict[str, Any] = {}
        for mode in ("pool", "inline"):
            with_slow = fast[f"fast_with_slow_{mode}"]
            for key, label in (("p99_ms", "p99"), ("p50_ms", "p50"),
                               ("req_per_s", "throughput")):
                ratios[f"fast_{label}_with_slow_over_alone_{mode}"] = _ratio(
                    with_slow[key], alone[key])
        emit(ratios)
        env = {
            **{f"{k}_set": k in os.environ for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "slow_ms": args.slow_ms,
            "replica": "build_app(GatewayCore) under uvicorn, one process, loopback, "
                       "no access log, no Ray",
            "wrk": bench.wrk_version(),
            "mode": "one replica at a time; the clients run beside it on the same cores",
        }
        emit(env)
        if args.json_out:
            args.json_out.write_text(json.dumps(
                {"runs": records, "ratios": ratios, "environment": env}, indent=2) + "\n")
            log(f"wrote {args.json_out}")
        return 1 if any("error" in r for r in records) else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if args.keep_tmp:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
