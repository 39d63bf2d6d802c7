"""Sequential looks stored as they are taken (``rampart analyze --record-look``).

A look reconstructed later from the logs shows what the logs say now about
that time; a look stored when it was taken shows what was actually seen and
acted on. Keeping both, side by side, makes a peek that was never admitted, a
rewritten log or a late-arriving outcome visible instead of silently absorbed.

One append-only JSON Lines file per experiment, next to its pre-registration
record: ``<preregistration dir>/<experiment>.looks.jsonl``. Each line is one
:class:`~rollout.experiments.results.RecordedLook`. Lines are only ever
appended (``O_APPEND``, one ``write`` per line, fsynced), never rewritten, so
a recorded look cannot be edited by a later run.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from pydantic import ValidationError

from rollout.experiments.results import RecordedLook, SequentialLook
from serving.kernel.errors import RampartError

SUFFIX = ".looks.jsonl"


class LooksFileError(RampartError):
    """A recorded-looks file that cannot be read or written; the message names it
    (and the line)."""

    code, status = "invalid_looks_file", 422


def looks_path(directory: Path, experiment_id: str) -> Path:
    """Where an experiment's looks are stored."""
    return Path(directory) / f"{experiment_id}{SUFFIX}"


def record_look(directory: Path, experiment_id: str, look: SequentialLook, *,
                recorded_at: dt.datetime, plan_sha256: str | None = None) -> RecordedLook:
    """Append ``look`` to the experiment's looks file and return it as recorded."""
    recorded = RecordedLook(**look.model_dump(), recorded_at=recorded_at.astimezone(dt.UTC),
                            plan_sha256=plan_sha256)
    line = (recorded.model_dump_json() + "\n").encode()
    path = looks_path(directory, experiment_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only like the logs the looks are computed from; one write of one
        # line in append mode, so concurrent recorders never interleave a line.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LooksFileError(f"{path}: cannot record the look: {exc.strerror or exc}") from None
    return recorded


def read_looks(directory: Path, experiment_id: str) -> tuple[RecordedLook, ...]:
    """Every look recorded for the experiment, in the order recorded (none when
    the file does not exist). A last line without its newline is a write that
    was cut short (a crash mid-append) and is left out; any other line that is
    not a recorded look is an error naming the file and line."""
    path = looks_path(directory, experiment_id)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise LooksFileError(f"{path}: cannot read the recorded looks: {exc}") from None
    lines = text.split("\n")
    complete = lines[:-1]  # after the last newline: empty, or a torn append
    out = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            out.append(RecordedLook.model_validate_json(line))
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem.get("loc", ())) or "line"
            raise LooksFileError(f"{path}: line {number}: not a recorded look "
                                 f"({where}: {problem.get('msg')})") from None
    return tuple(out)
