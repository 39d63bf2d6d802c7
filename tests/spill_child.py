"""A process that appends log rows until it is killed, for the SIGKILL tests.

``python -m tests.spill_child decisions|outcomes LOG_ROOT SPILL_ROOT`` builds
the writer the gateway builds (with a spill journal), then appends rows in
small batches forever. After each batch it prints ``<last index> <monotonic
time>`` and flushes stdout: every row up to that index was appended before
that time (CLOCK_MONOTONIC is one clock for every process on the machine).
"""

from __future__ import annotations

import sys
import time

from telemetry.decision_log import DecisionLogWriter, DecisionRecord
from telemetry.outcomes_log import OutcomeRecord, OutcomesLogWriter

BATCH = 20


def main(kind: str, log_root: str, spill_root: str) -> None:
    # A short flush interval, so that a kill lands among rows already written,
    # rows in a chunk being written, and rows only journaled.
    options = dict(batch_rows=100_000, flush_interval_s=0.3, spill_dir=spill_root)
    index = 0
    if kind == "decisions":
        decisions = DecisionLogWriter(log_root, "child", **options)  # type: ignore[arg-type]
        while True:
            for _ in range(BATCH):
                decisions.append(DecisionRecord(
                    f"r{index}", f"u{index}", "user_id", f"exp-{index % 3}", None, "control",
                    "clf", "1", "primary", time.time(), {"f0": float(index)}, 0.5, 1.0, "ok",
                    None))
                index += 1
            print(index - 1, time.monotonic(), flush=True)
            time.sleep(0.002)
    outcomes = OutcomesLogWriter(log_root, "child", **options)  # type: ignore[arg-type]
    while True:
        now_us = round(time.time() * 1e6)
        outcomes.append_many([OutcomeRecord(f"u{i}", "clicks", 1.0, now_us, None, now_us)
                              for i in range(index, index + BATCH)])
        index += BATCH
        print(index - 1, time.monotonic(), flush=True)
        time.sleep(0.002)


if __name__ == "__main__":
    main(*sys.argv[1:4])
