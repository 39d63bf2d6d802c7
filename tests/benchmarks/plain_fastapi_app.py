"""Baseline (a): one version behind a plain FastAPI app, as a typical user writes it.

Run by the benchmark as
``uvicorn plain_fastapi_app:app --app-dir tests/benchmarks --workers 1 --no-access-log``
with ``MLFLOW_TRACKING_URI`` pointing at the seeded registry; ``BENCH_MODEL_URI``
names the version (the champion unless set) and ``BENCH_MODEL_VERSION`` what the
answers call it.
"""

from __future__ import annotations

import os

import mlflow
import mlflow.sklearn
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_URI = os.environ.get("BENCH_MODEL_URI", "models:/rampart-demo-classifier/1")
MODEL_VERSION = os.environ.get("BENCH_MODEL_VERSION", "1")
FEATURES = [f"f{i}" for i in range(8)]

model = mlflow.sklearn.load_model(MODEL_URI)
app = FastAPI()


class PredictIn(BaseModel):
    unit_id: str
    features: dict[str, float]


@app.post("/v1/predict")
async def predict(req: PredictIn) -> dict[str, object]:
    row = pd.DataFrame([req.features], columns=FEATURES)
    prediction = float(model.predict_proba(row)[:, 1][0])
    return {"unit_id": req.unit_id, "prediction": prediction, "model_version": MODEL_VERSION}
