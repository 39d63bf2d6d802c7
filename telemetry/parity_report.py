"""Parity from the decision log: offline replay, shadow agreement, feature drift, report.

The I/O shell around :mod:`telemetry.parity`: reads decision-log Parquet,
loads model versions through MLflow's *offline* path (the scikit-learn flavour's
``predict_proba``/``predict``, or pyfunc), fetches the training reference a
version was logged with, and renders a JSON or HTML report.

Replay has two paths. A version over numeric features replays every logged
row at once, as one float matrix from the ``features`` maps, through the
offline path. That path takes a float vector and answers one score per row,
so the registry refuses it for a version whose signature has other types
(strings, booleans, tensors...) or that answers no single number (a
multi-class classifier); such a version replays through the serving loader's
own ``check_row`` and ``predict_rows`` instead, from each row as sent (its
``inputs`` JSON, or its ``features`` when all were floats), and the report
says which path it took. Rows are compared on their logged score
(``prediction``); a row whose answer is not one number (class probabilities,
a vector, named outputs) is compared on its whole logged ``output`` on the
serving-loader path, and skipped, and counted, on the numeric path, whose
offline predictions are scores only.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from telemetry.decision_log import read_decisions, to_json
from telemetry.parity import (
    Agreement,
    FeatureDrift,
    ReplayParity,
    agreement,
    agreement_by_segment,
    drift,
    output_diff,
    replay_parity,
    replay_parity_from_diffs,
)
from telemetry.storage import LogLocation
from telemetry.verdict import Verdict

if TYPE_CHECKING:
    from models.outputs import Prediction
    from models.registry import MlflowRegistry, NumericScorer, Scorer

log = logging.getLogger(__name__)

# Rows scored per predict_rows call on the serving-loader replay path: one
# DataFrame of this many rows at a time, not one of the whole log.
REPLAY_CHUNK_ROWS = 10_000


class ParityInputError(ValueError):
    """A decision log or model URI that cannot be used, named clearly."""


@dataclass(frozen=True)
class OfflineModel:
    """A version as replay scores it: ``predict`` (a float matrix in
    ``feature_names`` order -> scores) on MLflow's offline path, or, for a
    version over typed inputs, ``scorer`` (the serving loader's, checked and
    scored row by row); ``path`` says which, and why."""

    name: str
    version: str
    feature_names: tuple[str, ...]
    predict: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]] | None
    reference: dict[str, npt.NDArray[np.float64]] | None
    scorer: Scorer | None = None
    path: str = "offline"


def load_offline_model(model_uri: str, tracking_uri: str,
                       registry: MlflowRegistry | None = None) -> OfflineModel:
    """Resolve ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` through the model
    registry and load it on MLflow's offline path, with the training reference it
    was logged with (None when it has none).

    A version the offline path refuses as not replayable on floats (a
    ``ValueError``: its signature is not all numbers, or it answers no single
    score) is loaded as the gateway serves it instead, for row-by-row replay. A
    malformed URI, or a name, version or alias the registry does not have, is
    a :class:`ParityInputError`; any other failure (the store cannot be read)
    is raised as it is.
    """
    from models.registry import MlflowRegistry, UnknownModelVersion, parse_model_uri

    try:
        parse_model_uri(model_uri)
    except ValueError as exc:
        raise ParityInputError(f"--model: {exc}") from None
    registry = registry or MlflowRegistry(tracking_uri)
    try:
        name, version = registry.resolve_uri(model_uri)
        try:
            offline = registry.load_offline(name, version)
        except ValueError as exc:  # the registry's NotReplayable: not a float-vector model
            refused = f"{type(exc).__name__}: {exc}"
            log.info("%s/%s: the offline path refused it (%s); replaying through the "
                     "serving loader", name, version, refused)
            scorer = registry.load(name, version)
            return OfflineModel(name, version, scorer.schema.names, None,
                                registry.reference_sample(name, version) or None, scorer,
                                f"serving loader (the offline path refused it: {refused})")
        reference = registry.reference_sample(name, version)
    except UnknownModelVersion as exc:
        raise ParityInputError(f"--model {model_uri}: {exc}") from exc
    numeric = cast("NumericScorer", offline)  # the offline path takes a float matrix
    return OfflineModel(name, version, numeric.feature_names, numeric.predict_batch,
                        reference or None)


def feature_matrix(table: pa.Table, names: tuple[str, ...]) -> npt.NDArray[np.float64]:
    """Rows' ``features`` maps as a dense matrix in ``names`` order, vectorized.

    The gateway accepts only requests whose features match the signature
    exactly, so every logged row has each name once; a row that lacks one is
    reported rather than guessed.
    """
    column = table.column("features").combine_chunks()
    n = len(column)
    offsets = np.asarray(column.offsets)
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(n), lengths)
    keys = column.keys.to_numpy(zero_copy_only=False)
    values = column.items.to_numpy(zero_copy_only=False).astype(np.float64)
    matrix = np.full((n, len(names)), np.nan)
    for j, name in enumerate(names):
        mask = keys == name
        matrix[rows[mask], j] = values[mask]
    missing = np.isnan(matrix).any(axis=1)
    if missing.any():
        raise ParityInputError(
            f"{int(missing.sum())} logged rows lack some of the features {list(names)}")
    return matrix


def _primary_rows(table: pa.Table, name: str | None = None,
                  version: str | None = None) -> pa.Table:
    mask = pc.and_(pc.equal(table.column("role"), "primary"),
                   pc.equal(table.column("status"), "ok"))
    if name is not None:
        mask = pc.and_(mask, pc.equal(table.column("model_name"), name))
    if version is not None:
        mask = pc.and_(mask, pc.equal(table.column("model_version"), version))
    return table.filter(mask)


def load_log(path: str | Path) -> pa.Table:
    """Every row of the decision log at ``path`` (a local path or a URI such as
    ``s3://bucket/prefix``); :class:`~telemetry.storage.LogStorageError` when
    its storage cannot be read."""
    location = LogLocation.resolve(path)
    if not location.exists():
        raise ParityInputError(f"no decision log at {location}")
    table = read_decisions(location)
    if table.num_rows == 0:
        raise ParityInputError(f"the decision log at {location} is empty")
    return table


def run_replay(table: pa.Table, model: OfflineModel, tolerance: float) -> ReplayParity:
    """Replay the version's logged rows offline; compare with what it answered online."""
    rows = _primary_rows(table, model.name, model.version)
    if rows.num_rows == 0:
        return replay_parity([], [], [], tolerance)
    if model.predict is not None:
        return _replay_matrix(rows, model.predict, model.feature_names, tolerance)
    if model.scorer is None:
        raise ParityInputError(f"models:/{model.name}/{model.version} has no way to replay")
    return _replay_rows(rows, model.scorer, tolerance)


def _replay_matrix(rows: pa.Table,
                   predict: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
                   names: tuple[str, ...], tolerance: float) -> ReplayParity:
    """Every row at once: one matrix, one offline ``predict``, vectorized diffs.
    Rows logged without a score are skipped: this path predicts scores only."""
    scored = pc.is_valid(rows.column("prediction"))
    skipped = rows.num_rows - pc.sum(scored).as_py()
    if skipped:
        rows = rows.filter(scored)
        if rows.num_rows == 0:
            return replay_parity([], [], [], tolerance, skipped=skipped)
    matrix = feature_matrix(rows, names)
    offline = predict(matrix)
    online = rows.column("prediction").to_numpy(zero_copy_only=False).astype(np.float64)
    return replay_parity(online, offline, rows.column("request_id").to_pylist(), tolerance,
                         skipped=skipped)


def logged_rows(rows: pa.Table) -> list[dict[str, Any]]:
    """Each logged row as the client sent it: its ``inputs`` JSON, or its
    ``features`` map when that held everything (all floats)."""
    inputs = rows.column("inputs").to_pylist()
    features = rows.column("features").to_pylist()
    return [orjson.loads(text) if text is not None else dict(pairs or ())
            for text, pairs in zip(inputs, features, strict=True)]


def _answer(prediction: Prediction) -> Any:
    """A prediction's whole answer as the log's ``output`` JSON reads back."""
    return orjson.loads(to_json({"value": prediction.value, "label": prediction.label,
                                 "probabilities": prediction.probabilities}))


def _replay_rows(rows: pa.Table, scorer: Scorer, tolerance: float) -> ReplayParity:
    """Row by row through the scorer's own checks, in chunks of
    :data:`REPLAY_CHUNK_ROWS`. A row the replay refuses or fails on, though it
    was answered online, counts as over tolerance (an infinite difference)."""
    sent = logged_rows(rows)
    online = rows.column("prediction").to_pylist()
    outputs = rows.column("output").to_pylist()
    request_ids = rows.column("request_id").to_pylist()
    diffs: list[float] = []
    compared_ids: list[str] = []
    outputs_compared = skipped = 0
    for start in range(0, len(sent), REPLAY_CHUNK_ROWS):
        chunk = range(start, min(start + REPLAY_CHUNK_ROWS, len(sent)))
        wanted = [i for i in chunk if online[i] is not None or outputs[i] is not None]
        skipped += len(chunk) - len(wanted)
        replayed = _score_logged(scorer, [sent[i] for i in wanted])
        for i, prediction in zip(wanted, replayed, strict=True):
            compared_ids.append(request_ids[i])
            if prediction is None:
                diffs.append(math.inf)
            elif online[i] is not None:
                diffs.append(math.inf if prediction.score is None
                             else output_diff(online[i], prediction.score))
            else:
                outputs_compared += 1
                diffs.append(output_diff(orjson.loads(outputs[i]), _answer(prediction)))
    return replay_parity_from_diffs(diffs, compared_ids, tolerance,
                                    outputs_compared=outputs_compared, skipped=skipped)


def _score_logged(scorer: Scorer, sent: list[Mapping[str, Any]]) -> list[Prediction | None]:
    """Predictions for rows as sent; None for a row refused by ``check_row``
    or in a ``predict_rows`` call that failed."""
    from models.registry import score_rows

    predictions, errors = score_rows(scorer, sent)
    for i, error in enumerate(errors):
        if error is not None:
            log.debug("replay: row %d not scored: %s", i, error)
    return predictions


@dataclass(frozen=True)
class ShadowPairs:
    primary_version: str
    shadow_version: str
    primary: npt.NDArray[np.float64]
    shadow: npt.NDArray[np.float64]
    arms: list[str]


def shadow_pairs(table: pa.Table) -> list[ShadowPairs]:
    """Join each ok shadow row to its primary row by ``request_id``."""
    shadows = table.filter(pc.and_(pc.equal(table.column("role"), "shadow"),
                                   pc.equal(table.column("status"), "ok")))
    if shadows.num_rows == 0:
        return []
    primary = _primary_rows(table).select(["request_id", "model_version", "prediction", "arm"])
    joined = shadows.select(["request_id", "model_version", "prediction"]).join(
        primary, "request_id", right_suffix="_primary", join_type="inner")
    # Agreement is on scores: pairs where either answer is not one number are left out.
    joined = joined.filter(pc.and_(pc.is_valid(joined.column("prediction")),
                                   pc.is_valid(joined.column("prediction_primary"))))
    out = []
    shadow_versions = joined.column("model_version").to_pylist()
    primary_versions = joined.column("model_version_primary").to_pylist()
    s = joined.column("prediction").to_numpy(zero_copy_only=False).astype(np.float64)
    p = joined.column("prediction_primary").to_numpy(zero_copy_only=False).astype(np.float64)
    arms = joined.column("arm").to_pylist()
    for pv, sv in sorted(set(zip(primary_versions, shadow_versions, strict=True))):
        idx = [i for i, key in enumerate(zip(primary_versions, shadow_versions, strict=True))
               if key == (pv, sv)]
        out.append(ShadowPairs(pv, sv, p[idx], s[idx], [str(arms[i]) for i in idx]))
    return out


def live_features(table: pa.Table, names: tuple[str, ...]) -> dict[str, npt.NDArray[np.float64]]:
    rows = _primary_rows(table)
    matrix = feature_matrix(rows, names)
    return {name: matrix[:, j] for j, name in enumerate(names)}


@dataclass
class ParityReport:
    decisions: str
    rows: int
    agreement: list[tuple[ShadowPairs, Agreement, dict[str, Agreement]]]
    replay: ReplayParity | None
    model: str | None
    drift: list[FeatureDrift]
    min_label_agreement: float
    replay_path: str | None = None  # how the replay scored (see OfflineModel.path)

    @property
    def verdict(self) -> Verdict:
        """FAIL when replay fails, a feature drifted or shadow agreement is below
        the minimum; else INSUFFICIENT_DATA when the replay had no rows or there
        was nothing to check (a check without data is not a pass); else PASS."""
        failing = (
            (self.replay is not None and self.replay.verdict == Verdict.FAIL)
            or any(d.drifted for d in self.drift)
            or any(a.label_agreement is not None and a.label_agreement
                   < self.min_label_agreement for _, a, _ in self.agreement)
        )
        if failing:
            return Verdict.FAIL
        unjudged = self.replay is not None and self.replay.verdict != Verdict.PASS
        if unjudged or not (self.agreement or self.drift or self.replay is not None):
            return Verdict.INSUFFICIENT_DATA
        return Verdict.PASS

    def as_json(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "rows": self.rows,
            "verdict": self.verdict,
            "agreement": [
                {"primary_version": pairs.primary_version, "shadow_version": pairs.shadow_version,
                 **overall.model_dump(),
                 "by_arm": {k: v.model_dump() for k, v in by_arm.items()}}
                for pairs, overall, by_arm in self.agreement
            ],
            "replay": None if self.replay is None else {
                "model": self.model, "path": self.replay_path, **self.replay.model_dump()},
            "drift": [d.model_dump() for d in self.drift],
        }


def build_report(
    decisions: str | Path, model: OfflineModel | None, tolerance: float,
    psi_threshold: float, ks_alpha: float, min_label_agreement: float,
    reference: dict[str, npt.NDArray[np.float64]] | None = None,
) -> ParityReport:
    """Agreement (shadow vs primary), replay (if a model is given) and drift."""
    table = load_log(decisions)
    pairs = shadow_pairs(table)
    agreements = [(p, agreement(p.primary, p.shadow), agreement_by_segment(
        p.primary, p.shadow, p.arms)) for p in pairs]
    replay = run_replay(table, model, tolerance) if model is not None else None
    drift_results: list[FeatureDrift] = []
    ref = reference if reference is not None else (model.reference if model else None)
    if ref is not None:
        names = tuple(sorted(ref))
        drift_results = drift(ref, live_features(table, names), psi_threshold, ks_alpha)
    return ParityReport(str(decisions), table.num_rows, agreements, replay,
                        None if model is None else f"models:/{model.name}/{model.version}",
                        drift_results, min_label_agreement,
                        None if model is None else model.path)


# ------------------------------------------------------------------ HTML


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def render_html(report: ParityReport) -> str:
    """A self-contained page: summary tables and three plots (scatter of shadow vs
    primary scores, histogram of their differences, PSI per feature)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: list[tuple[str, str]] = []
    for pairs, overall, _ in report.agreement:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.scatter(pairs.primary, pairs.shadow, s=4, alpha=0.4)
        lims = [0.0, 1.0] if overall.kind == "classifier" else [
            float(min(pairs.primary.min(), pairs.shadow.min())),
            float(max(pairs.primary.max(), pairs.shadow.max()))]
        left.plot(lims, lims, color="grey", linewidth=1)
        left.set(xlabel=f"primary v{pairs.primary_version} score",
                 ylabel=f"shadow v{pairs.shadow_version} score",
                 title=f"shadow vs primary ({overall.n} requests)")
        right.hist(pairs.shadow - pairs.primary, bins=50, color="tab:orange")
        right.set(xlabel="shadow - primary", ylabel="requests", title="score difference")
        images.append((f"Shadow v{pairs.shadow_version} vs primary v{pairs.primary_version}",
                       _png(fig)))
        plt.close(fig)
    if report.drift:
        fig, ax = plt.subplots(figsize=(10, 3.5))
        names = [d.feature for d in report.drift]
        colors = ["tab:red" if d.drifted else "tab:green" for d in report.drift]
        ax.bar(names, [d.psi for d in report.drift], color=colors)
        ax.axhline(y=0.2, color="grey", linestyle="--", linewidth=1)
        ax.set(ylabel="PSI", title="feature drift vs training reference (red: drifted)")
        images.append(("Feature drift", _png(fig)))
        plt.close(fig)

    def table(headers: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row)
                       + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    sections = [f"<h1>Rampart parity report</h1><p class='verdict {report.verdict}'>"
                f"{report.verdict}</p><p>{html.escape(report.decisions)}: {report.rows} rows; "
                f"made {dt.datetime.now(tz=dt.UTC):%Y-%m-%d %H:%M:%S} UTC</p>"]
    sections.append("<h2>Shadow agreement</h2>" + (table(
        ["primary", "shadow", "requests", "label agreement", "|diff| p50", "|diff| p99",
         "max |diff|"],
        [[a.primary_version, a.shadow_version, o.n, o.label_agreement,
          o.abs_diff_quantiles.get("p50"), o.abs_diff_quantiles.get("p99"), o.max_abs_diff]
         for a, o, _ in report.agreement]) if report.agreement else "<p>no shadow traffic</p>"))
    if report.replay is not None:
        r = report.replay
        sections.append("<h2>Offline replay</h2>" + table(
            ["model", "rows", "verdict", "max |diff|", "p99 |diff|", "over tolerance",
             "tolerance", "compared on whole output", "skipped", "examples"],
            [[report.model, r.n, r.verdict, r.max_abs_diff, r.abs_diff_quantiles.get("p99"),
              r.over_tolerance, r.tolerance, r.outputs_compared, r.skipped,
              ", ".join(r.examples)]])
            + (f"<p>scored through the {html.escape(report.replay_path)}</p>"
               if report.replay_path and report.replay_path != "offline" else ""))
    if report.drift:
        sections.append("<h2>Feature drift</h2>" + table(
            ["feature", "PSI", "KS statistic", "KS p-value", "drifted"],
            [[d.feature, d.psi, d.ks_statistic, d.ks_p_value, d.drifted]
             for d in report.drift]))
    for title, data in images:
        sections.append(f"<h2>{html.escape(title)}</h2><img class='plot' alt='"
                        f"{html.escape(title)}' src='data:image/png;base64,{data}'>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             ".verdict{font-size:1.5em;font-weight:bold}.PASS{color:#1a7f37}.FAIL{color:#c62828}"
             ".INSUFFICIENT_DATA{color:#b26a00}"
             "img.plot{max-width:100%}")
    # The page reports how many plots the browser decoded (checked by a test).
    script = ("window.addEventListener('load',()=>{const ok=[...document.images].filter(i=>"
              "i.complete&&i.naturalWidth>0).length;document.body.dataset.plotsLoaded=ok;});")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Rampart parity report"
            f"</title><style>{style}</style></head><body>{''.join(sections)}"
            f"<script>{script}</script></body></html>")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
