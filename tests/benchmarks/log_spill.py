"""Spill journal benchmark: the decision log's throughput with the journal off,
on (fsync every tick) and on without fsync, in one run.

    .venv/bin/python tests/benchmarks/log_spill.py [--rows 200000] [--rounds 3]

One thread appends ``--rows`` decision records (the gateway's defaults:
batch_rows 5000, flush 2 s, spill every 50 ms) as fast as it can, as the
request path would; the writer is then closed. Two rates per mode:
``append_rows_per_s`` (the appending thread alone: what the request path
pays, journal thread included through the GIL) and ``end_to_end_rows_per_s``
(until every row is in Parquet). Modes alternate, ``--rounds`` times; the
medians and their ratios to "off" are printed as JSON.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from telemetry.decision_log import DecisionLogWriter, DecisionRecord, read_decisions  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "off": {},
    "on": {"spill_fsync": True},
    "on_no_fsync": {"spill_fsync": False},
}


def one_run(directory: Path, mode: str, rows: int) -> dict[str, float]:
    options = dict(MODES[mode])
    if mode != "off":
        options["spill_dir"] = directory / "spill"
    writer = DecisionLogWriter(directory / "log", "bench", **options)
    features = {f"f{i}": float(i) for i in range(8)}
    started = time.perf_counter()
    for i in range(rows):
        writer.append(DecisionRecord(
            f"r{i}", f"u{i}", "user_id", "exp", "default", "control", "clf", "1", "primary",
            time.time(), features, 0.5, 1.25, "ok", None))
    appended = time.perf_counter()
    writer.close()
    done = time.perf_counter()
    assert read_decisions(directory / "log").num_rows == rows
    return {"append_rows_per_s": rows / (appended - started),
            "end_to_end_rows_per_s": rows / (done - started),
            "write_errors": writer.write_errors, "spill_errors": writer.spill_errors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            directory = Path(tempfile.mkdtemp(prefix="rampart-spill-bench-"))
            try:
                results[mode].append(one_run(directory, mode, args.rows))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    medians = {mode: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for mode, runs in results.items()}
    ratios = {mode: {key: medians[mode][key] / medians["off"][key]
                     for key in ("append_rows_per_s", "end_to_end_rows_per_s")}
              for mode in MODES if mode != "off"}
    print(json.dumps({"rows": args.rows, "rounds": args.rounds, "medians": medians,
                      "ratio_to_off": ratios,
                      "runs": results}, indent=2))


if __name__ == "__main__":
    main()
