"""Where the logs live: paths and URIs resolved once, hidden names never read,
storage failures as the project's one-line errors. No server: S3 filesystems
are only built here (that makes no request); tests/integration's
test_object_store_logs.py talks to a real one."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from serving.cli.common import project_error
from serving.cli.main import main
from serving.kernel.config import DecisionLogConfig, OutcomesLogConfig, parse_config
from serving.kernel.errors import ConfigError, LogStorageUnavailable
from telemetry.batched_writer import visible_parquet_files
from telemetry.decision_log import DecisionLogWriter, DecisionRecord, read_decisions
from telemetry.outcomes_log import read_outcomes
from telemetry.storage import LogLocation, LogStorageError, is_uri, one_line
from tests.ports import free_port

AWS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AWS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unit-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def _record(i: int) -> DecisionRecord:
    return DecisionRecord(f"r{i}", "u", "user_id", None, None, "default", "clf", "1", "primary",
                          1_700_000_000.0 + i, {"f0": float(i)}, 0.5, 1.0, "ok", None)


def test_uris_and_paths_are_told_apart() -> None:
    assert is_uri("s3://bucket/prefix") and is_uri("gs://b/p") and is_uri("file:///tmp/x")
    assert not is_uri("relative/dir") and not is_uri("/abs/dir") and not is_uri(Path("s3:/x"))


def test_config_keeps_a_uri_as_text_and_a_path_as_a_path() -> None:
    assert DecisionLogConfig().path == Path(".rampart/decisions")
    assert DecisionLogConfig(path="s3://bucket/decisions").path == "s3://bucket/decisions"
    assert OutcomesLogConfig(path="gs://b/outcomes").path == "gs://b/outcomes"
    assert DecisionLogConfig(path="logs/d").path == Path("logs/d")
    config = parse_config({"models": [{"name": "clf", "versions": ["1"]}],
                           "default": {"model": "clf", "version": "1"},
                           "decision_log": {"path": "s3://bucket/decisions/"}})
    assert config.decision_log.path == "s3://bucket/decisions/"
    dumped = config.model_dump(mode="json")
    assert parse_config(dumped).decision_log.path == "s3://bucket/decisions/"
    with pytest.raises(ConfigError):
        parse_config({**dumped, "outcomes_log": {"path": 3}})


def test_resolve_paths_makes_local_paths_absolute_and_leaves_uris_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.gateway.ray_app import ReplicaSettings, resolve_outcomes_path, resolve_paths

    monkeypatch.chdir(tmp_path)
    base = {"models": [{"name": "clf", "versions": ["1"]}],
            "default": {"model": "clf", "version": "1"}}
    local = parse_config({**base, "decision_log": {"path": "logs/d"},
                          "outcomes_log": {"path": "logs/o"}})
    assert resolve_paths(local)[0] == tmp_path.resolve() / "logs" / "d"
    assert resolve_outcomes_path(local) == tmp_path.resolve() / "logs" / "o"
    remote = parse_config({**base, "decision_log": {"path": "s3://b/d"},
                           "outcomes_log": {"path": "s3://b/o"}})
    assert resolve_paths(remote)[0] == "s3://b/d"
    assert resolve_outcomes_path(remote) == "s3://b/o"
    settings = ReplicaSettings(config=remote, tracking_uri="sqlite://", decision_dir="s3://b/d",
                               outcomes_dir=Path("/x"))
    assert (settings.decision_dir, settings.outcomes_dir) == ("s3://b/d", Path("/x"))


def test_a_local_location_from_a_path_or_a_file_uri(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = LogLocation.resolve("logs")
    assert relative.local and relative.path == str(tmp_path / "logs")
    assert str(relative) == "logs" and str(relative.join("date=x", "a.parquet")) == os.path.join(
        "logs", "date=x", "a.parquet")
    by_uri = LogLocation.resolve(f"file://{tmp_path}/logs/")
    assert by_uri.local and by_uri.path == str(tmp_path / "logs")
    assert LogLocation.resolve(by_uri) is by_uri


def test_s3_takes_endpoint_and_region_from_the_environment(aws: pytest.MonkeyPatch) -> None:
    aws.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    aws.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    location = LogLocation.resolve("s3://bucket/logs/decisions/")
    assert isinstance(location.fs, pafs.S3FileSystem) and not location.local
    assert (location.path, location.uri) == ("bucket/logs/decisions", "s3://bucket/logs/decisions")
    options = location.fs.__reduce__()[1][0]
    assert (options["endpoint_override"], options["scheme"], options["region"]) == (
        "127.0.0.1:9000", "http", "eu-west-3")
    assert location.join("date=x", "p.parquet").path == "bucket/logs/decisions/date=x/p.parquet"
    # the S3-specific variable wins over the generic one, as in the AWS SDKs
    aws.setenv("AWS_ENDPOINT_URL_S3", "https://minio.internal:9443")
    aws.setenv("AWS_REGION", "us-west-2")
    options = LogLocation.resolve("s3://bucket").fs.__reduce__()[1][0]
    assert (options["endpoint_override"], options["scheme"], options["region"]) == (
        "minio.internal:9443", "https", "us-west-2")


def test_a_uri_pyarrow_cannot_open_is_a_storage_error() -> None:
    with pytest.raises(LogStorageError, match=r"^cannot open nope://x/y: "):
        LogLocation.resolve("nope://x/y")


def test_readers_skip_hidden_and_temporary_names(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "w", batch_rows=100_000, flush_interval_s=3600)
    for i in range(4):
        writer.append(_record(i))
    writer.close()
    [written] = visible_parquet_files(tmp_path)
    for hidden in (".part-x.parquet", "_temporary/part-y.parquet",
                   "date=2023-11-14/.part-z.parquet", "date=2023-11-14/_part-z.parquet"):
        (tmp_path / hidden).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(read_decisions(written).slice(0, 1), tmp_path / hidden)
    assert visible_parquet_files(tmp_path) == [written]
    assert visible_parquet_files(f"file://{tmp_path}") == [written]
    assert read_decisions(f"file://{tmp_path}").num_rows == 4
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_writer_resolves_a_uri_in_its_flush_thread_and_counts_a_failure(
        tmp_path: Path) -> None:
    writer = DecisionLogWriter("nope://bucket/decisions", "w", batch_rows=100_000,
                               flush_interval_s=3600)
    writer.append(_record(1))  # resolving the URI is not the request path's business
    assert writer.flush() == 0 and writer.write_errors == 1
    writer.close()
    local = DecisionLogWriter(tmp_path / "new" / "log", "w", batch_rows=10,
                              flush_interval_s=3600)
    assert (tmp_path / "new" / "log").is_dir()  # made by the writer, not by its caller
    local.close()


def test_storage_failures_are_the_projects_one_line_errors() -> None:
    error = project_error(LogStorageError("cannot reach s3://b/x: refused"))
    assert isinstance(error, LogStorageUnavailable) and error.message == (
        "cannot reach s3://b/x: refused")
    assert error.code == "log_storage_unavailable"
    config_error = ConfigError("bad")
    assert project_error(config_error) is config_error
    assert project_error(ValueError("a bug")) is None
    assert one_line(OSError("When reading:\n  AWS Error\tX")) == "When reading: AWS Error X"


def test_the_cli_answers_an_unreachable_endpoint_with_one_line_and_exit_2(
        aws: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aws.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    aws.setenv("AWS_REGION", "us-east-1")
    assert main(["parity", "report", "--decisions", "s3://bucket/decisions"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rampart: error: cannot reach "
                                                   "s3://bucket/decisions: ")
    events = tmp_path / "events.csv"
    events.write_text("unit_id,metric,value\nu1,converted,1\n")
    assert main(["outcomes", "import", str(events), "--outcomes", "s3://bucket/o"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3://bucket/o" in err
    assert read_outcomes(tmp_path / "absent").num_rows == 0


def test_local_logs_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    import stat

    import pyarrow as pa

    from telemetry.storage import LogLocation

    root = tmp_path / "logs"
    LogLocation.resolve(root / "date=2026-11-30" / "experiment=e").write_parquet(
        pa.table({"x": [1]}), "part-1.parquet")
    for path in (root, root / "date=2026-11-30", root / "date=2026-11-30" / "experiment=e"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    written = root / "date=2026-11-30" / "experiment=e" / "part-1.parquet"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert not list(written.parent.glob(".*"))
