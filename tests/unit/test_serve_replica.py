"""The replica's model-update rules, without Ray or a registry: a version that cannot be
served is refused once; /health tells the served version from the alias target."""

import time
from collections import Counter
from types import SimpleNamespace

import pytest

from rayops import tracking
from rayops.config import ServeConfig
from rayops.errors import ModelFilesMissing
from rayops.serve.aliases import AliasFollower, LoadedModel
from rayops.serve.bodies import ModelInfo
from rayops.serve.deployment import ModelServer
from rayops.serve.routing import ModelFailed, route
from rayops.serve.settings import ReplicaSettings


def _info(version: str) -> ModelInfo:
    return ModelInfo(name="m", version=version, alias="champion", run_id="r")


def _registered(version: str) -> tracking.RegisteredModel:
    return tracking.RegisteredModel("m", version, "champion", "r", "src")


class Replica:
    """A ModelServer whose alias follower's registry look-up and download are scripted."""

    def __init__(self, served: str = "1", stale_after_s: float = 60.0) -> None:
        settings = ReplicaSettings(
            model_name="m",
            serve=ServeConfig(
                max_records_per_request=5,
                max_batch_size=1,
                batch_wait_timeout_s=0.0,
                max_body_bytes=1024,
                model_poll_interval_s=1.0,
                registry_stale_after_s=stale_after_s,
            ),
        )
        self.server = object.__new__(ModelServer)
        self.server.settings, self.server.stats = settings, Counter()
        self.aliases = self.server.aliases = AliasFollower(settings, self.server.stats)
        self.schema = {"x": "numeric"}
        self.aliases.model = self._loaded(served, self.schema)
        self.aliases.registry_ok_at, self.aliases.alias_target = time.monotonic(), served
        self.target = served
        self.downloads: list[str] = []
        self.failure: Exception | None = None
        self.next_schema = self.schema
        self.aliases.resolve = self._resolve
        self.aliases.load = self._load

    @staticmethod
    def _loaded(version: str, schema: dict) -> LoadedModel:
        return LoadedModel(SimpleNamespace(schema=schema), _info(version))

    def _resolve(self) -> tracking.RegisteredModel:
        self.aliases.registry_ok_at = time.monotonic()
        self.aliases.alias_target = self.target
        return _registered(self.target)

    def _load(self, registered: tracking.RegisteredModel, alias: str | None = None) -> LoadedModel:
        self.downloads.append(registered.version)
        if self.failure is not None:
            raise self.failure
        return self._loaded(registered.version, self.next_schema)


def test_a_moved_alias_is_swapped_in():
    replica = Replica()
    replica.target = "2"
    assert replica.server.refresh() is True
    assert replica.server.model.info.version == "2"
    assert replica.server.health()["status"] == "ok"


@pytest.mark.parametrize("problem", ["schema", "files"])
def test_a_version_that_cannot_be_served_is_refused_once(problem):
    replica = Replica()
    replica.target = "2"
    if problem == "schema":
        replica.next_schema = {"y": "numeric"}
    else:
        replica.failure = ModelFilesMissing("the files of m v2 are gone")
    for _ in range(5):
        assert replica.server.refresh() is False
    assert replica.downloads == ["2"]  # not downloaded again on every poll
    health = replica.server.health()
    assert health["status"] == "degraded"
    assert health["model"]["version"] == "1"
    state = health["alias"]
    assert state["target_version"] == "2" and state["served_version"] == "1"
    expected = "other inputs" if problem == "schema" else "files of m v2 are gone"
    assert state["not_served"] == {"2": "refused: see /metadata"}  # the open route
    assert expected in replica.server.alias_state().not_served["2"]
    replica.target = "3"  # a later, servable version is still taken
    replica.failure, replica.next_schema = None, replica.schema
    assert replica.server.refresh() is True
    assert replica.server.health()["status"] == "ok"


def test_a_registry_that_stops_answering_shows_in_health():
    replica = Replica(stale_after_s=30)
    assert replica.server.health()["alias"]["registry_reachable"] is True
    replica.aliases.registry_ok_at = time.monotonic() - 31
    replica.aliases.registry_error = (
        "cannot read m@champion from the registry at "
        "https://ops:hunter2@mlflow.internal:5000: timed out"
    )
    health = replica.server.health()
    assert health["status"] == "degraded"
    assert health["alias"]["registry_reachable"] is False
    assert health["alias"]["registry_checked_s_ago"] >= 31
    # /health is open: it says the registry is down, not where it is or how to log in
    assert health["alias"]["registry_error"].startswith("the registry did not answer")
    assert "hunter2" not in str(health) and "mlflow.internal" not in str(health)
    detail = replica.server.alias_state().registry_error  # what /metadata shows
    assert "mlflow.internal" in detail and "hunter2" not in detail and "ops:" not in detail


def test_a_tracking_uri_with_credentials_never_reaches_an_error_message():
    """A real registry call against a closed port, through the real MLflow client."""
    from rayops.config import TrackingConfig
    from rayops.errors import TrackingError
    from tests.helpers import free_port

    uri = f"http://ops:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError) as raised:
        tracking.require_reachable(TrackingConfig(uri=uri), timeout_s=1)
    assert "hunter2" not in str(raised.value) and "127.0.0.1" in str(raised.value)


class _Picky:
    """A model that fails on any batch holding a record marked bad."""

    schema = {"x": "numeric"}

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_valid(self, records):
        self.calls.append(len(records))
        if any(r["x"] == "bad" for r in records):
            raise OverflowError("int too large to convert to float")
        return [{"prediction": r["x"]} for r in records]


def test_one_failing_request_does_not_fail_the_others_in_its_batch():
    import asyncio

    replica = Replica()
    server, model = replica.server, _Picky()
    replica.aliases.model = LoadedModel(model, _info("1"))
    server.metrics = SimpleNamespace(batch_size=SimpleNamespace(observe=lambda n: None))
    # the batch Serve's queue hands over: three requests of one record each
    batch = ModelServer.predict_batch.__wrapped__(server, [[{"x": 1}], [{"x": "bad"}], [{"x": 3}]])
    good, failed, other = asyncio.run(batch)
    assert model.calls[0] == 3  # one model call for the batch, which failed
    assert good["predictions"] == [{"prediction": 1}]
    assert other["predictions"] == [{"prediction": 3}]
    assert isinstance(failed, ModelFailed) and "too large" in str(failed.error)
    assert server.stats["batches_split"] == 1


def test_a_canary_serves_only_a_version_the_registry_says_passed(tmp_path):
    """canary_fraction 1.0: every request would go to @challenger's model. A version the
    gate refused (pointed at by hand), or one withdrawn since, gets no traffic at all."""
    from rayops.config import TrackingConfig

    config = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db")
    client = tracking.client(config)
    client.create_registered_model("m")
    for i in range(2):
        client.create_model_version("m", source=f"file:///models/{i}")
    tracking.set_alias(config, "m", "champion", "1")
    tracking.tag_version(config, "m", "2", {tracking.PASSED_TAG: "false"})
    tracking.set_alias(config, "m", "challenger", "2")  # a person's mistake, or a stale alias

    replica = Replica()
    aliases = replica.aliases
    aliases.settings = aliases.settings.model_copy(update={"tracking": config})
    aliases.serve = aliases.serve.model_copy(update={"canary_fraction": 1.0})
    aliases.refresh_shadow()
    assert aliases.shadow is None and replica.downloads == []  # refused, never loaded
    tracking.tag_version(config, "m", "2", {tracking.PASSED_TAG: "true"})
    aliases.refresh_shadow()
    assert aliases.shadow is not None and aliases.shadow.info.version == "2"
    assert route(aliases, "any caller")[1] == "canary"
    tracking.withdraw(config, "m", "2", "refused in shadow")
    aliases.refresh_shadow()
    assert aliases.shadow is None  # the alias is gone: the canary stops
    assert route(aliases, "any caller")[1] == "champion"
