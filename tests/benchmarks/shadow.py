"""Shadow benchmark: the primary's throughput and p99 with a shadow mirroring 100% of
traffic against none, in one run; then offline replay parity over 1,000,000 logged
decisions.

    .venv/bin/python tests/benchmarks/shadow.py [--duration 10] [--rounds 2]

Gateways run one at a time (alternating none / shadow, ``--rounds`` times) on the
same machine, driven by the same wrk script at 8 connections.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
sys.path.append(_HERE)  # after the repository root: ``serving`` stays Rampart's package

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from peers import serving_benchmark  # noqa: E402


def wrk(url: str, duration_s: int) -> dict[str, object]:
    bench = serving_benchmark()
    cmd = [shutil.which("wrk") or "wrk", "-t2", "-c8", f"-d{duration_s}s", "--latency", "-s",
           os.path.join(_HERE, "wrk_post.lua"), f"{url}/v1/predict", "--", "predict"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    result: dict[str, object] = bench.parse_wrk(done.stdout)  # type: ignore[attr-defined]
    return result


def decisions_with(n: int, scorer: object, out: Path) -> None:
    """A decision log of ``n`` rows whose online predictions come from ``scorer``."""
    from telemetry.decision_log import conform

    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(8)]
    x = rng.normal(size=(n, 8))
    pred = scorer.predict_batch(x)  # type: ignore[attr-defined]
    features = pa.MapArray.from_arrays(
        pa.array(np.arange(0, 8 * n + 1, 8, dtype=np.int32)),
        pa.array(np.tile(names, n)), pa.array(x.reshape(-1)))
    cols = {
        "request_id": pa.array([f"r{i}" for i in range(n)]),
        "unit_id": pa.array([f"u{i}" for i in range(n)]),
        "unit_type": pa.array(["user_id"] * n), "experiment_id": pa.nulls(n, pa.string()),
        "layer": pa.nulls(n, pa.string()), "arm": pa.array(["default"] * n),
        "model_name": pa.array(["rampart-demo-classifier"] * n),
        "model_version": pa.array(["1"] * n), "role": pa.array(["primary"] * n),
        "timestamp": pa.array(np.full(n, int(time.time() * 1e6)),
                              type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "features": features, "prediction": pa.array(pred), "latency_ms": pa.array(np.ones(n)),
        "status": pa.array(["ok"] * n), "error": pa.nulls(n, pa.string()),
        "context": pa.nulls(n, pa.map_(pa.string(), pa.string())),
        # All-float rows: ``features`` holds each whole (no ``inputs``), replay compares
        # the score (no ``output``) and reads no unit source.
        "inputs": pa.nulls(n, pa.string()), "output": pa.nulls(n, pa.string()),
        "unit_source": pa.nulls(n, pa.string()),
    }
    out.mkdir(parents=True, exist_ok=True)
    # conform: the columns left out here (keys, splits) are filled as the writer fills them
    pq.write_table(conform(pa.table(cols)), out / "part-bench.parquet")


def main() -> int:
    from models.registry import MlflowRegistry
    from serving.cli.demo.models import DEMO_MODEL_NAME, seed_demo_models
    from serving.cli.launch import start_gateway
    from serving.kernel.config import parse_config
    from telemetry.parity_report import load_log, load_offline_model, run_replay

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replay-rows", type=int, default=1_000_000)
    parser.add_argument("--port", type=int, default=18_700)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing: run `make system-deps`", file=sys.stderr)
        return 2
    print(json.dumps({"OPENBLAS_CORETYPE_set": "OPENBLAS_CORETYPE" in os.environ,
                      "OPENBLAS_L2_SIZE_set": "OPENBLAS_L2_SIZE" in os.environ,
                      "cpu_count": os.cpu_count()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="rampart-shadow-") as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        seeded = seed_demo_models(uri, work / "artifacts")
        runs: dict[str, list[dict[str, object]]] = {"none": [], "shadow": []}
        for round_no in range(args.rounds):
            for mode in ("none", "shadow"):
                data = yaml.safe_load((Path(_ROOT) / "deploy" / "rampart.yaml").read_text())
                run_dir = work / f"{mode}-{round_no}"
                data.update(tracking_uri=uri, data_dir=str(run_dir))
                data["decision_log"] = {"path": str(run_dir / "decisions")}
                data["telemetry"] = {"metrics_dir": str(run_dir / "metrics")}
                data["server"] = {"host": "127.0.0.1", "port": args.port, "num_replicas": 1}
                if mode == "shadow":
                    data["shadows"] = [{"model": DEMO_MODEL_NAME, "version": "candidate",
                                        "sample_bp": 10_000}]
                gateway = start_gateway(parse_config(data))
                try:
                    wrk(gateway.url, 2)  # warm-up
                    result = {"mode": mode, "round": round_no, **wrk(gateway.url, args.duration)}
                finally:
                    gateway.stop()
                print(json.dumps(result), flush=True)
                runs[mode].append(result)

        def median(mode: str, key: str) -> float:
            return float(statistics.median(float(str(r[key])) for r in runs[mode]))

        rps_ratio = median("shadow", "req_per_s") / median("none", "req_per_s")
        p99_ratio = median("shadow", "p99_ms") / median("none", "p99_ms")
        print(json.dumps({
            "primary_req_per_s_none": median("none", "req_per_s"),
            "primary_req_per_s_shadow_100pct": median("shadow", "req_per_s"),
            "primary_p99_ms_none": median("none", "p99_ms"),
            "primary_p99_ms_shadow_100pct": median("shadow", "p99_ms"),
            "throughput_ratio": round(rps_ratio, 3), "p99_ratio": round(p99_ratio, 3),
            "goal_within_5pct": rps_ratio >= 0.95 and p99_ratio <= 1.05,
        }), flush=True)

        champion = seeded.versions["champion"]
        scorer = MlflowRegistry(uri).load(DEMO_MODEL_NAME, champion)
        log_dir = work / "replay"
        decisions_with(args.replay_rows, scorer, log_dir)
        model = load_offline_model(f"models:/{DEMO_MODEL_NAME}/{champion}", uri)
        started = time.perf_counter()
        replay = run_replay(load_log(log_dir), model, 1e-6)
        elapsed = time.perf_counter() - started
        print(json.dumps({"replay_rows": replay.n, "replay_seconds": round(elapsed, 3),
                          "replay_rows_per_second": round(replay.n / elapsed),
                          "verdict": replay.verdict, "max_abs_diff": replay.max_abs_diff}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
