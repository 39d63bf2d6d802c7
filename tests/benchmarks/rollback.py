"""Rollback benchmark: how long a faulty candidate keeps serving after its fault starts.

Starts Rampart on local Ray with MLflow on SQLite in a temporary directory,
runs the rollout scenarios at 1 s analysis intervals under steady traffic
(the fault, 250 ms of latency or 30% errors, is injected into the candidate
once it has passed its second step, i.e. at 25%), and prints one JSON line per
run, then a summary beside what Flagger would allow at the same traffic and
canary weight: with its default 1 min interval and threshold 1 (rollback on
the first failed check, 0-60 s after onset), and with the common setting of
threshold 5 (five failed one-minute checks, 240-300 s after onset).

    .venv/bin/python tests/benchmarks/rollback.py [--runs 3] [--port 18600]
"""

from __future__ import annotations

import os
import sys

# This directory holds the benchmark script ``serving.py``; keep ``serving``
# meaning Rampart's package here and in the Ray workers.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

FLAGGER_INTERVAL_S = 60.0


def main() -> int:
    from serving.cli.demo.models import DEMO_MODEL_NAME, seed_demo_models
    from serving.cli.demo.scenarios import run_scenario
    from serving.cli.launch import start_gateway
    from serving.kernel.config import parse_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="latency-fault runs")
    parser.add_argument("--port", type=int, default=18_600)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rampart-rollback-") as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        seeded = seed_demo_models(uri, work / "artifacts")
        data = yaml.safe_load((Path(_ROOT) / "deploy" / "rampart.yaml").read_text())
        data.update(tracking_uri=uri, data_dir=str(work), experiments=[])
        data["decision_log"] = {"path": str(work / "decisions")}
        data["telemetry"] = {"metrics_dir": str(work / "metrics")}
        data["server"] = {"host": "127.0.0.1", "port": args.port, "num_replicas": 1}
        token = "benchmark-token"
        gateway = start_gateway(parse_config(data), admin_token=token, chaos=True)
        results = []
        try:
            baseline = seeded.versions["champion"]
            plan = ["latency-fault"] * args.runs + ["error-fault"]
            for scenario in plan:
                result = run_scenario(gateway.url, token, scenario, DEMO_MODEL_NAME,  # type: ignore[arg-type]
                                      baseline, seeded.versions["candidate"], interval_s=1.0,
                                      failure_limit=2)
                line = {k: v for k, v in result.as_json().items() if k != "timeline"}
                duration = max(1e-9, (result.timeline[-1]["t_s"] if result.timeline else 1.0))
                line["traffic_req_per_s"] = round(result.requests_total / (duration + 1.5), 1)
                print(json.dumps(line), flush=True)
                results.append((result, line["traffic_req_per_s"]))
        finally:
            gateway.stop()

    rolled = [(r, rate) for r, rate in results if r.rollback_s is not None]
    rollback_s = [r.rollback_s for r, _ in rolled]
    served = [r.requests_to_candidate_after_onset for r, _ in rolled]
    rate = statistics.median(rate for _, rate in rolled)
    weight = statistics.median(r.candidate_weight_at_onset_pct or 0 for r, _ in rolled) / 100
    candidate_rate = rate * weight

    def flagger(threshold: int) -> dict[str, float]:
        best = (threshold - 1) * FLAGGER_INTERVAL_S  # onset just before a check
        worst = threshold * FLAGGER_INTERVAL_S
        return {"rollback_s_min": best, "rollback_s_max": worst,
                "candidate_requests_min": round(candidate_rate * best),
                "candidate_requests_max": round(candidate_rate * worst)}

    summary = {
        "interval_s": 1.0,
        "runs": len(rolled),
        "all_rolled_back": all(r.outcome == "rolled_back" for r, _ in results),
        "rollback_s_median": statistics.median(rollback_s),
        "rollback_s_max": max(rollback_s),
        "within_2_intervals": all(s <= 2.0 for s in rollback_s),
        "candidate_requests_after_onset_median": statistics.median(served),
        "candidate_requests_after_onset_max": max(served),
        "traffic_req_per_s": rate,
        "candidate_weight_at_onset": weight,
        "flagger_interval_1m_threshold_1": flagger(1),
        "flagger_interval_1m_threshold_5": flagger(5),
        "OPENBLAS_CORETYPE_set": "OPENBLAS_CORETYPE" in os.environ,
        "OPENBLAS_L2_SIZE_set": "OPENBLAS_L2_SIZE" in os.environ,
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["all_rolled_back"] else 1


if __name__ == "__main__":
    sys.exit(main())
