"""HTTP request and response bodies of the gateway (``/v1/predict``, errors)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from serving.kernel.ids import MAX_UNIT_ID_CHARS, ContextValue, FeatureValue


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_id: StrictStr = Field(min_length=1, max_length=MAX_UNIT_ID_CHARS)
    features: dict[str, FeatureValue]
    context: dict[str, ContextValue] = Field(default_factory=dict)
    request_id: StrictStr | None = Field(default=None, min_length=1, max_length=128)


class PredictResponse(BaseModel):
    """Body of a successful ``POST /v1/predict``."""

    request_id: str
    prediction: float
    model_name: str
    model_version: str
    experiment_id: str | None
    arm: str


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: ``{"error": {"code", "message", "request_id"}}``."""

    error: ErrorBody


