"""Baseline (b): the same FastAPI handler on Ray Serve behind its default HTTP proxy.

Usage: ``python plain_ray_serve.py PORT`` with ``MLFLOW_TRACKING_URI`` set.
Blocks until SIGTERM/SIGINT, then shuts Serve and Ray down.

The deployment gets the same knobs as Rampart's (one replica, up to 256
requests in flight, no access log, no dashboard) so the only difference left
is the request path: client -> Ray Serve proxy -> replica.
"""

# No ``from __future__ import annotations`` here: Ray Serve rebuilds the
# class-based routes in the replica, where string annotations such as
# "PredictIn" would not resolve and FastAPI would take the body for a query
# parameter.
import logging
import os
import signal
import sys
import threading

import pandas as pd
import ray
from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve

MODEL_URI = os.environ.get("BENCH_MODEL_URI", "models:/rampart-demo-classifier/1")
FEATURES = [f"f{i}" for i in range(8)]

app = FastAPI()


class PredictIn(BaseModel):
    unit_id: str
    features: dict[str, float]


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=256,
    logging_config={"enable_access_log": False, "log_level": "WARNING"},
)
@serve.ingress(app)
class PlainModel:
    def __init__(self) -> None:
        import mlflow.sklearn

        self.model = mlflow.sklearn.load_model(MODEL_URI)

    @app.post("/v1/predict")
    async def predict(self, req: PredictIn) -> dict[str, object]:
        row = pd.DataFrame([req.features], columns=FEATURES)
        prediction = float(self.model.predict_proba(row)[:, 1][0])
        return {"unit_id": req.unit_id, "prediction": prediction, "model_version": "1"}


def main() -> int:
    port = int(sys.argv[1])
    for key in ("RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_ENABLE_HA_PROXY"):
        if os.environ.get(key):
            print(f"{key} is set: this baseline needs Ray Serve's default proxy", file=sys.stderr)
            return 2
    stop = threading.Event()
    # address="local": always a fresh local Ray, never someone else's running cluster.
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        # ray.init installs its own SIGTERM handler; replace it with a clean stop.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    logging_config={"log_level": "WARNING", "enable_access_log": False})
        serve.run(PlainModel.bind(), name="plain", route_prefix="/", blocking=False)
        print("READY", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
