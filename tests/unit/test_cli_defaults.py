"""The packaged default config, ``rampart serve --model`` and the demo's
routing: what is decided before Ray, MLflow or a port is touched."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import pytest

from serving.cli import common
from serving.cli.common import DEFAULT_CONFIG, load_config_or_exit, model_config
from serving.cli.demo.models import FEATURE_NAMES, TREE_TRUSTED_TYPES, make_training_data
from serving.cli.demo.traffic import ClientResult, platforms_of, summarize
from serving.cli.main import build_parser, main, serve_config
from serving.routing.router import build_routing_table, route

ROOT = Path(__file__).resolve().parents[2]
MAIN_EXPERIMENT = "demo-champion-vs-challenger"
DEMO_VERSIONS = {"champion": "1", "challenger": "2", "candidate": "3", "tree": "4"}


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no deploy/ in it, and no MLflow from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def nothing_heavy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command gets as far as MLflow or the gateway launcher."""

    def no_registry(config: object) -> object:
        raise AssertionError("MLflow was asked before the arguments were checked")

    monkeypatch.setattr(common, "registry_for", no_registry)
    # A None entry makes `import serving.cli.launch` (which imports Ray) fail.
    monkeypatch.setitem(sys.modules, "serving.cli.launch", None)


def _serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_the_packaged_default_loads_from_any_directory(elsewhere: Path) -> None:
    assert not (elsewhere / "deploy").exists()
    config = load_config_or_exit(DEFAULT_CONFIG)
    assert [e.id for e in config.experiments] == ["demo-tree", MAIN_EXPERIMENT]
    (model,) = config.models
    assert model.versions == ("champion", "challenger", "candidate", "tree")
    # relative paths stay relative: under whatever directory the command runs in
    assert config.data_dir == Path(".rampart")
    assert config.resolved_tracking_uri() == f"sqlite:///{elsewhere / '.rampart' / 'mlflow.db'}"


def test_the_default_is_the_one_the_commands_use(elsewhere: Path) -> None:
    for command in (["serve"], ["assign"], ["demo"], ["analyze", "--experiment", "x"]):
        args = build_parser().parse_args(command)
        assert (args.config or DEFAULT_CONFIG) == DEFAULT_CONFIG
    config, _ = serve_config(_serve_args())
    assert config == load_config_or_exit(DEFAULT_CONFIG)


def test_the_example_deploy_file_is_the_packaged_default() -> None:
    # One source of truth: edit serving/defaults/rampart.yaml and copy it over.
    assert (ROOT / "deploy" / "rampart.yaml").read_bytes() == DEFAULT_CONFIG.read_bytes()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "bad-uri"], "models:/NAME/VERSION or models:/NAME@ALIAS, got 'bad-uri'"),
        (["--model", "models:/x/1.5"], "got 'models:/x/1.5'"),
        (["--model", ""], "models:/NAME/VERSION"),
        (["--model", "models:/x@champion", "--config", "deploy/rampart.yaml"],
         "--model and --config cannot be combined"),
        (["--model", "bad-uri", "--config", "deploy/rampart.yaml"],
         "--model and --config cannot be combined"),
    ],
)
def test_serve_refuses_a_bad_model_in_one_line(
    argv: list[str], needle: str, elsewhere: Path, nothing_heavy: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("rampart: error: ") and needle in captured.err
    assert captured.err.count("\n") == 1
    assert not (elsewhere / ".rampart").exists()


@pytest.mark.parametrize(("uri", "version"), [("models:/x@champion", "champion"),
                                              ("models:/my.model/3", "3")])
def test_model_config_serves_that_one_model_to_everyone(
    uri: str, version: str, elsewhere: Path,
) -> None:
    name = uri.removeprefix("models:/").split("@")[0].split("/")[0]
    config = model_config(uri, None)
    (model,) = config.models
    assert (model.name, model.versions) == (name, (version,))
    assert (config.default.model, config.default.version) == (name, version)
    assert config.experiments == () and config.shadows == () and config.feature_transforms == ()
    # everything else as the packaged default has it
    default = load_config_or_exit(DEFAULT_CONFIG)
    assert config.server == default.server
    assert config.decision_log == default.decision_log
    assert config.data_dir == Path(".rampart")
    assert config.resolved_tracking_uri() == f"sqlite:///{elsewhere / '.rampart' / 'mlflow.db'}"
    # an alias is resolved when the table is built; the whole population gets it
    table = build_routing_table(config, lambda _model, _version: "7")
    for unit, context in (("u1", {}), ("u2", {"platform": "web"})):
        decision = route(table, unit, context)
        assert (decision.experiment_id, decision.arm) == (None, "default")
        assert (decision.model.name, decision.model.version) == (name, "7")


def test_model_tracking_uri_comes_from_the_flag_then_the_environment(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    config, hint = serve_config(_serve_args("--model", "models:/x@prod"))
    assert config.resolved_tracking_uri() == "http://mlflow.example:5000"
    assert "--tracking-uri" in hint
    config, _ = serve_config(_serve_args("--model", "models:/x@prod",
                                         "--tracking-uri", "sqlite:///elsewhere.db"))
    assert config.resolved_tracking_uri() == "sqlite:///elsewhere.db"
    # a config keeps its own tracking (or its data_dir's SQLite), as before
    config, hint = serve_config(_serve_args())
    assert config.resolved_tracking_uri().startswith(f"sqlite:///{elsewhere}")
    assert "seed-demo" in hint
    config, _ = serve_config(_serve_args("--tracking-uri", "sqlite:///other.db"))
    assert config.resolved_tracking_uri() == "sqlite:///other.db"


def test_the_tree_experiment_takes_web_users_and_leaves_the_rest() -> None:
    config = load_config_or_exit(DEFAULT_CONFIG)
    table = build_routing_table(config, lambda _model, alias: DEMO_VERSIONS[alias])
    users = [f"user-{i:06d}" for i in range(20_000)]
    taken: Counter[str | None] = Counter()
    served: Counter[tuple[str | None, str, str]] = Counter()
    for user, platform in zip(users, platforms_of(users), strict=True):
        decision = route(table, user, {"platform": platform})
        assert (decision.experiment_id == "demo-tree") == (platform == "web")
        taken[decision.experiment_id] += 1
        served[(decision.experiment_id, decision.arm, decision.model.version)] += 1
    # the main experiment keeps about four fifths of the units
    assert 0.75 < taken[MAIN_EXPERIMENT] / len(users) < 0.85
    tree_units = taken["demo-tree"]
    assert 0.45 < served[("demo-tree", "tree", "4")] / tree_units < 0.55
    assert served[("demo-tree", "control", "1")] + served[("demo-tree", "tree", "4")] == (
        tree_units)
    # a request without context (assign, offline replay) goes to the main experiment
    assert route(table, "user-000001").experiment_id == MAIN_EXPERIMENT


def test_the_per_version_table_keeps_each_experiments_arms_apart() -> None:
    bodies: list[dict[str, object]] = [
        {"model_name": "m", "model_version": "1", "experiment_id": MAIN_EXPERIMENT,
         "arm": "control"},
        {"model_name": "m", "model_version": "1", "experiment_id": "demo-tree",
         "arm": "control"},
        {"model_name": "m", "model_version": "4", "experiment_id": "demo-tree", "arm": "tree"},
        {"model_name": "m", "model_version": "4", "experiment_id": "demo-tree", "arm": "tree"},
        {"model_name": "m", "model_version": "1", "experiment_id": None, "arm": "default"},
        {"error": {"code": "internal", "message": "boom"}},
    ]
    result = ClientResult(status_codes=[200] * 5 + [500], bodies=bodies,
                          latencies_s=[0.001] * 6, sent_request_ids=[str(i) for i in range(6)])
    rows = {(r.model_version, r.experiment, r.arm): r for r in summarize(result)}
    assert set(rows) == {("1", MAIN_EXPERIMENT, "control"), ("1", "demo-tree", "control"),
                         ("4", "demo-tree", "tree"), ("1", "-", "default"), ("-", "-", "-")}
    assert rows[("4", "demo-tree", "tree")].requests == 2
    assert rows[("4", "demo-tree", "tree")].share == pytest.approx(2 / 6)
    assert rows[("-", "-", "-")].errors == 1


def test_skops_trusts_every_type_a_fitted_tree_model_holds() -> None:
    import pandas as pd
    import skops.io  # type: ignore[import-untyped]
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = make_training_data(500, seed=4)
    model = HistGradientBoostingClassifier(max_depth=2, max_iter=5, random_state=4)
    model.fit(pd.DataFrame(x, columns=list(FEATURE_NAMES)), y)
    needed = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    assert needed and set(needed) <= set(TREE_TRUSTED_TYPES)


@pytest.fixture
def bounded_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client bounded as the commands bound it, restored after the test."""
    from models.registry import BOUNDED_HTTP_ENV

    for key, value in BOUNDED_HTTP_ENV.items():
        monkeypatch.setenv(key, value)


def test_an_mlflow_server_that_is_not_there_is_one_line_naming_it(
        elsewhere: Path, bounded_mlflow: None) -> None:
    from tests.ports import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    config = load_config_or_exit(DEFAULT_CONFIG).model_copy(update={"tracking_uri": uri})
    with pytest.raises(common.StoreUnreachable) as caught:
        common.routing_table(config)
    message = str(caught.value)
    assert uri in message and "no MLflow tracking server answers" in message
    assert "seed-demo" not in message and "\n" not in message


def test_registry_tells_an_unreachable_server_from_a_missing_version(
        bounded_mlflow: None) -> None:
    from models.registry import MlflowRegistry, RegistryUnavailable, UnknownModelVersion
    from tests.ports import free_port

    registry = MlflowRegistry(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryUnavailable, match="cannot reach the MLflow tracking server"):
        registry.resolve("m", "1")
    with pytest.raises(RegistryUnavailable, match="no MLflow tracking server answers"):
        registry.check_reachable(timeout_s=1.0)
    assert not issubclass(RegistryUnavailable, UnknownModelVersion)
