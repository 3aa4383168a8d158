"""Many clients, one deployment: tenants with landing zones of their own.

Real components: two clients' buckets on the moto server (127.0.0.1) with IAM authentication on,
each readable only with its tenant's own key (by environment variable names of its own), a
tenant with a local folder, the default landing folder (INGEST_LANDING_URL) beside them, the
real definitions' sensors evaluated with build_sensor_context, the real jobs executed in process
and a DuckDB warehouse file."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import moto.settings
import pytest
import yaml
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from ingest_pipeline import ledger, warehouse
from ingest_pipeline.bronze import SourceFile
from ingest_pipeline.config import ConfigError, parse_config
from ingest_pipeline.definitions import RESOURCES, defs
from ingest_pipeline.discovery import plan_tick
from ingest_pipeline.feeds import API_STREAMS
from ingest_pipeline.landing import LandedObject, LocalLanding
from ingest_pipeline.ledger import LedgerFile
from ingest_pipeline.pipeline import RetryPolicy
from ingest_pipeline.recovery import RunInfo, plan_recovery
from ingest_pipeline.tenants import (
    DEFAULT_ENTRY,
    TENANT_TAG,
    dump_cursors,
    landing_cursors,
    tenant_landings,
)

TENANT_KEY_ENVS = {"a": ("CLIENT_A_KEY_ID", "CLIENT_A_SECRET"), "b": ("B_S3_ID", "B_S3_PASSWORD")}


def _events(tenant: str, n: int, start: int = 0) -> bytes:
    rows = [
        {
            "event_text": "opened app",
            "event_timestamp": 1_764_000_000 + i,
            "contact_key": f"user-{i}",
            "who": tenant,
        }
        for i in range(start, start + n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


# --- the set-up -----------------------------------------------------------------------------


class Clients:
    """Two clients' buckets (tenants a and b), each with its own IAM user and key."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.buckets = {"a": f"client-a-{suffix}", "b": f"client-b-{suffix}"}
        self.keys: dict[str, tuple[str, str]] = {}
        self.s3: dict[str, Any] = {}

    def put(self, tenant: str, key: str, body: bytes) -> None:
        """Through the S3 API, with the tenant's own key."""
        self.s3[tenant].put_object(Bucket=self.buckets[tenant], Key=f"inbox/{key}", Body=body)

    def seed(self, tenant: str, key: str, body: bytes) -> None:
        """Straight into the moto store (fast bulk setup; reading still goes through S3)."""
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        backend.put_object(self.buckets[tenant], f"inbox/{key}", body)


@pytest.fixture
def clients(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Clients]:
    out = Clients()
    iam = boto3.client("iam")
    admin = boto3.client("s3")
    for tenant, bucket in out.buckets.items():
        admin.create_bucket(Bucket=bucket)
        user = f"tenant-{tenant}-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:Get*", "s3:List*", "s3:Put*"],
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        iam.put_user_policy(UserName=user, PolicyName="own", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        out.keys[tenant] = (key["AccessKeyId"], key["SecretAccessKey"])
        id_env, secret_env = TENANT_KEY_ENVS[tenant]
        monkeypatch.setenv(id_env, key["AccessKeyId"])
        monkeypatch.setenv(secret_env, key["SecretAccessKey"])
        out.s3[tenant] = boto3.client(
            "s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
        )
    # Authentication on: only the tenants' own keys get in; ours (the standard AWS variables)
    # is known to no one, so a landing zone read with it fails.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key-moto-knows")
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    yield out


@pytest.fixture
def deployment(clients: Clients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ingest.yaml with tenants a and b (buckets), c (a local folder) and d (no landing zone),
    the default landing folder, lake and warehouse local."""
    config = {
        "tenants": {
            "a": {
                "landing_url": f"s3://{clients.buckets['a']}/inbox",
                "aws_access_key_id_env": TENANT_KEY_ENVS["a"][0],
                "aws_secret_access_key_env": TENANT_KEY_ENVS["a"][1],
                "region": "us-east-1",
            },
            "b": {
                "landing_url": f"s3://{clients.buckets['b']}/inbox",
                "aws_access_key_id_env": TENANT_KEY_ENVS["b"][0],
                "aws_secret_access_key_env": TENANT_KEY_ENVS["b"][1],
            },
            "c": {"landing_url": "client-c"},  # relative to ingest.yaml's folder
            "d": {"api_key_env": "D_API_KEY"},
        }
    }
    (tmp_path / "client-c").mkdir()
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("INGEST_CONFIG", str(tmp_path / "ingest.yaml"))
    monkeypatch.setenv("INGEST_LANDING_URL", str(tmp_path / "landing"))
    monkeypatch.setenv("INGEST_TENANT", "default")
    monkeypatch.setenv("INGEST_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(tmp_path / "warehouse.duckdb"))
    for name in ("INGEST_MAX_FILES_PER_RUN", "INGEST_MAX_RUNS_PER_TICK"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


class Track:
    """The real track sensor and job."""

    def __init__(self, instance: dg.DagsterInstance, cursor: str | None = None) -> None:
        self.instance, self.cursor = instance, cursor
        self.sensor = defs.get_sensor_def("track_landing_sensor")
        self.job = defs.resolve_job_def("ingest_track")
        self.skip: str | None = None

    def tick(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=RESOURCES, definitions=defs
        ) as context:
            result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        self.skip = result.skip_message
        return list(result.run_requests or [])

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        return self.job.execute_in_process(
            run_config=request.run_config or {},
            partition_key=request.partition_key,
            instance=self.instance,
            tags={**request.tags, "dagster/run_key": request.run_key or ""},
            raise_on_error=False,
        )


def _ledger(root: Path) -> list[tuple[str, str, str, str]]:
    with warehouse.connect(root / "warehouse.duckdb", read_only=True) as con:
        return con.execute(
            "SELECT tenant_id, landing_key, source_uri, status FROM ingested_files ORDER BY ALL"
        ).fetchall()


def _requested(root: Path, request: dg.RunRequest) -> list[LedgerFile]:
    with warehouse.connect(root / "warehouse.duckdb", read_only=True) as con:
        return ledger.requested_files(con, request.run_key or "")


# --- configuration ----------------------------------------------------------------------------


def _problems(tenants: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config({"tenants": tenants})
    return str(err.value)


def test_configuration_errors_name_the_tenant_and_key(tmp_path: Path) -> None:
    assert "tenants.acme.landing_url: 'ftp://host/in': unsupported scheme 'ftp'" in _problems(
        {"acme": {"landing_url": "ftp://host/in"}}
    )
    assert "tenants.acme.landing_url: 's3://' has no bucket" in _problems(
        {"acme": {"landing_url": "s3://"}}
    )
    assert "tenants.acme.landing_url: '/': a landing zone is a folder" in _problems(
        {"acme": {"landing_url": "/"}}
    )
    assert "tenants.acme.aws_secret_access_key_env: is required with aws_access_key_id_env" in (
        _problems({"acme": {"landing_url": "s3://b/x", "aws_access_key_id_env": "K"}})
    )
    assert "tenants.acme.region: only applies to an s3:// landing_url" in _problems(
        {"acme": {"landing_url": "./in", "region": "eu-west-1"}}
    )
    assert "tenants.acme.aws_access_key_id_env: '1KEY' must be the name of an environment" in (
        _problems(
            {
                "acme": {
                    "landing_url": "s3://b/x",
                    "aws_access_key_id_env": "1KEY",
                    "aws_secret_access_key_env": "S",
                }
            }
        )
    )
    assert "tenants.acme.landing_urls: unknown key" in _problems(
        {"acme": {"landing_urls": "s3://b/x"}}
    )
    overlap = _problems({"a": {"landing_url": "s3://drops/in"}, "b": {"landing_url": "s3://drops"}})
    assert "tenants.b.landing_url: s3://drops overlaps tenant a's landing zone" in overlap
    assert "overlaps" in _problems(
        {"a": {"landing_url": str(tmp_path)}, "b": {"landing_url": str(tmp_path / "b")}}
    )
    # a prefix that merely begins the same is another prefix; another bucket is another zone
    fine = parse_config(
        {
            "tenants": {
                "a": {"landing_url": "s3://drops/in"},
                "b": {"landing_url": "s3://drops/inbox"},
                "c": {"landing_url": "s3://other/in"},
                "d": {"api_key_env": "D_KEY"},
            }
        }
    )
    landings = tenant_landings(fine, default_url=str(tmp_path / "l"), default_tenant="default")
    # the default zone first; a tenant without landing_url gets none of its own
    assert [(la.entry, la.tenant, la.own) for la in landings] == [
        (DEFAULT_ENTRY, "default", False),
        ("a", "a", True),
        ("b", "b", True),
        ("c", "c", True),
    ]
    with pytest.raises(ConfigError, match=r"tenants\.a\.landing_url: .* overlaps the default"):
        tenant_landings(fine, default_url="s3://drops", default_tenant="default")


def test_no_tenant_landing_zone_keeps_the_single_landing_zone_as_before(tmp_path: Path) -> None:
    config = parse_config({"tenants": {"acme": {"api_key_env": "ACME_KEY"}}})
    landings = tenant_landings(config, default_url=str(tmp_path), default_tenant="acme")
    assert [(la.entry, la.tenant, la.url) for la in landings] == [
        (DEFAULT_ENTRY, "acme", str(tmp_path))
    ]


def test_an_old_cursor_becomes_the_default_zone_entry(tmp_path: Path) -> None:
    zone = LocalLanding(tmp_path)
    zone.put("track/a.jsonl", _events("x", 1))
    old = plan_tick(
        zone.list("track/"), None, max_files_per_run=10, max_runs_per_tick=10, lookback_seconds=60
    ).cursor
    assert landing_cursors(old) == {DEFAULT_ENTRY: old}
    entries = {DEFAULT_ENTRY: old, "acme": old}
    assert landing_cursors(dump_cursors(entries)) == {
        k: json.dumps(json.loads(v)) for k, v in entries.items()
    }
    assert landing_cursors(None) == {}
    assert landing_cursors("{not json") == {}


def test_a_file_in_a_tenants_own_zone_is_that_tenants_whatever_its_key_says() -> None:
    stream = API_STREAMS["contact_event"]
    key = (
        "data/tenants/objects/contact_event/source_system=dataapi/tenant=b/dt=2026-12-01-10-00/"
        "0b7c8f9e-1a2b-4c3d-9e8f-0123456789ab.jsonl"
    )
    obj = LandedObject(key, "e", 1, datetime.now(UTC), f"s3://client-a/{key}")
    assert SourceFile.of_feed(obj, stream, "a").tenant_id == "b"  # the default zone: the key's
    assert SourceFile.of_feed(obj, stream, "a", own_landing=True).tenant_id == "a"


# --- the sensors and runs ---------------------------------------------------------------------


def test_every_tenants_zone_is_watched_and_its_files_are_its_tenants(
    deployment: Path, clients: Clients
) -> None:
    same = _events("same", 3)
    clients.put("a", "track/a.jsonl", same)  # the same key and content in both buckets
    clients.put("b", "track/a.jsonl", same)
    clients.put("b", "track/b-only.jsonl", _events("b", 2, start=10))
    LocalLanding(deployment / "client-c").put("track/c.jsonl", _events("c", 2))
    # each key opens its own bucket only: a run can read b's files with b's key alone
    with pytest.raises(clients.s3["a"].exceptions.ClientError, match="AccessDenied"):
        clients.s3["a"].get_object(Bucket=clients.buckets["b"], Key="inbox/track/a.jsonl")
    LocalLanding(deployment / "landing").put("track/default.jsonl", _events("default", 1))

    with dg.instance_for_test() as instance:
        track = Track(instance)
        requests = track.tick()
        by_tenant = {r.tags[TENANT_TAG]: r for r in requests}
        assert sorted(by_tenant) == ["a", "b", "c", "default"]
        assert len(requests) == 4 and len({r.run_key for r in requests}) == 4
        # Each request holds its tenant's files only, though a and b hold the same key+ETag.
        for tenant, request in by_tenant.items():
            files = _requested(deployment, request)
            assert {f.tenant_id for f in files} == {tenant}
        assert sorted(f.landing_key for f in _requested(deployment, by_tenant["b"])) == [
            "track/a.jsonl",
            "track/b-only.jsonl",
        ]
        # The cursor: one entry per landing zone; tenant d has no zone, so no entry.
        cursor = json.loads(track.cursor or "")
        assert cursor["v"] == 2 and sorted(cursor["landings"]) == [DEFAULT_ENTRY, "a", "b", "c"]

        for request in requests:
            assert track.run(request).success
        assert track.tick() == []  # nothing new anywhere

        # By hand: keys of a tenant's own zone, with the tenant named beside them.
        by_hand = track.job.execute_in_process(
            run_config={
                "ops": {"track_bronze": {"config": {"keys": ["track/a.jsonl"], "tenant": "b"}}}
            },
            partition_key=requests[0].partition_key,
            instance=instance,
        )
        assert by_hand.success
        materialization = by_hand.asset_materializations_for_node("track_bronze")[0]
        assert materialization.metadata["file_uris"].value == [
            f"s3://{clients.buckets['b']}/inbox/track/a.jsonl"
        ]

    rows = _ledger(deployment)
    assert {(t, k, s) for t, k, _, s in rows} == {
        ("a", "track/a.jsonl", "ingested"),
        ("b", "track/a.jsonl", "ingested"),
        ("b", "track/b-only.jsonl", "ingested"),
        ("c", "track/c.jsonl", "ingested"),
        ("default", "track/default.jsonl", "ingested"),
    }
    uris = {(t, k): u for t, k, u, _ in rows}
    assert uris["a", "track/a.jsonl"] == f"s3://{clients.buckets['a']}/inbox/track/a.jsonl"
    assert uris["b", "track/a.jsonl"] == f"s3://{clients.buckets['b']}/inbox/track/a.jsonl"
    with warehouse.connect(deployment / "warehouse.duckdb", read_only=True) as con:
        events = con.execute(
            "SELECT tenant_id, properties->>'who', source_uri, count(*) FROM events GROUP BY ALL"
        ).fetchall()
    assert sorted(events) == sorted(
        [
            ("a", "same", uris["a", "track/a.jsonl"], 3),
            ("b", "same", uris["b", "track/a.jsonl"], 3),
            ("b", "b", uris["b", "track/b-only.jsonl"], 2),
            ("c", "c", uris["c", "track/c.jsonl"], 2),
            ("default", "default", uris["default", "track/default.jsonl"], 1),
        ]
    )


def test_an_old_plain_cursor_carries_on_as_the_default_zones(
    deployment: Path, clients: Clients
) -> None:
    default = LocalLanding(deployment / "landing")
    default.put("track/seen.jsonl", _events("default", 1))
    old = plan_tick(
        default.list("track/"),
        None,
        max_files_per_run=10,
        max_runs_per_tick=10,
        lookback_seconds=3600,
    ).cursor
    default.put("track/new.jsonl", _events("default", 1, start=5))
    clients.put("a", "track/a.jsonl", _events("a", 1))
    with dg.instance_for_test() as instance:
        track = Track(instance, cursor=old)
        requests = track.tick()
    assert sorted(
        (r.tags[TENANT_TAG], f.landing_key) for r in requests for f in _requested(deployment, r)
    ) == [("a", "track/a.jsonl"), ("default", "track/new.jsonl")]
    assert sorted(json.loads(track.cursor or "")["landings"]) == [DEFAULT_ENTRY, "a", "b", "c"]


def test_a_zone_that_cannot_be_listed_is_reported_and_the_others_go_on(
    deployment: Path, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    clients.put("b", "track/b.jsonl", _events("b", 1))
    monkeypatch.setenv(TENANT_KEY_ENVS["b"][0], "AKIAWRONGWRONGWRONG0")
    (deployment / "client-c").rmdir()  # a folder that is not there is not created
    with dg.instance_for_test() as instance:
        track = Track(instance)
        assert track.tick() == []
        assert track.skip is not None
        assert f"tenant c's landing zone {deployment / 'client-c'}" in track.skip
        assert "is not a folder" in track.skip and not (deployment / "client-c").exists()
        assert f"tenant b's landing zone s3://{clients.buckets['b']}/inbox" in track.skip
        assert "Given S3 access key is not valid (InvalidAccessKeyId)" in track.skip
        assert "AKIAWRONG" not in track.skip and clients.keys["b"][1] not in track.skip

        # b still broken: a's new file is requested all the same
        clients.put("a", "track/a.jsonl", _events("a", 2))
        requests = track.tick()
        assert [r.tags[TENANT_TAG] for r in requests] == ["a"]
        assert track.run(requests[0]).success

        # a variable not set: said so, by name
        monkeypatch.delenv(TENANT_KEY_ENVS["b"][1])
        assert track.tick() == []
        assert f"environment variable {TENANT_KEY_ENVS['b'][1]}" in (track.skip or "")

        # b's credentials fixed: its file, waiting all along, is found
        monkeypatch.setenv(TENANT_KEY_ENVS["b"][0], clients.keys["b"][0])
        monkeypatch.setenv(TENANT_KEY_ENVS["b"][1], clients.keys["b"][1])
        requests = track.tick()
        assert [r.tags[TENANT_TAG] for r in requests] == ["b"]
        assert track.run(requests[0]).success
    assert {(t, k, s) for t, k, _, s in _ledger(deployment)} == {
        ("a", "track/a.jsonl", "ingested"),
        ("b", "track/b.jsonl", "ingested"),
    }


def test_a_broken_file_fails_its_tenants_run_only(
    deployment: Path, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((deployment / "ingest.yaml").read_text())
    config["feeds"] = {"track": {"on_error": "abort"}}  # a bad line fails the whole run
    (deployment / "ingest.yaml").write_text(yaml.safe_dump(config))
    clients.put("a", "track/good.jsonl", _events("a", 2))
    clients.put("a", "track/broken.jsonl", b'{"event_text": "x"\nnot json at all\n')
    clients.put("b", "track/good.jsonl", _events("b", 3))
    with dg.instance_for_test() as instance:
        track = Track(instance)
        requests = {r.tags[TENANT_TAG]: r for r in track.tick()}
        assert sorted(requests) == ["a", "b"]
        assert not track.run(requests["a"]).success
        assert track.run(requests["b"]).success
    # The broken file failed alone: b's files and a's good one (parsed before the abort,
    # merged by the next merge of the feed) are loaded.
    assert {(t, k): s for t, k, _, s in _ledger(deployment)} == {
        ("a", "track/broken.jsonl"): "failed",
        ("a", "track/good.jsonl"): "ingested",
        ("b", "track/good.jsonl"): "ingested",
    }
    with warehouse.connect(deployment / "warehouse.duckdb", read_only=True) as con:
        assert con.execute(
            "SELECT tenant_id, count(*) FROM events GROUP BY ALL ORDER BY ALL"
        ).fetchall() == [("a", 2), ("b", 3)]


def test_a_burst_from_one_tenant_still_gives_the_other_a_run_in_the_same_tick(
    deployment: Path, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_MAX_FILES_PER_RUN", "2")
    monkeypatch.setenv("INGEST_MAX_RUNS_PER_TICK", "3")
    for i in range(40):
        clients.seed("a", f"track/burst-{i:03d}.jsonl", _events("a", 1, start=i))
    clients.put("b", "track/b.jsonl", _events("b", 1))
    with dg.instance_for_test() as instance:
        track = Track(instance)
        requests = track.tick()
        tenants = [r.tags[TENANT_TAG] for r in requests]
        # a's burst is capped at its own INGEST_MAX_RUNS_PER_TICK; b's run is there, early
        assert sorted(tenants) == ["a", "a", "a", "b"]
        assert tenants.index("b") == 1
        assert (
            sum(len(_requested(deployment, r)) for r in requests if r.tags[TENANT_TAG] == "a") == 6
        )
        # later ticks take the rest of a's burst, 3 runs at a time
        assert [r.tags[TENANT_TAG] for r in track.tick()] == ["a", "a", "a"]


def test_recovery_requests_keep_each_tenants_files_together(
    deployment: Path, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_REQUEST_GRACE_SECONDS", "1")
    monkeypatch.setenv("INGEST_RETRY_DELAY_SECONDS", "1")
    clients.put("a", "track/a.jsonl", _events("a", 1))
    clients.put("b", "track/a.jsonl", _events("a", 1))  # same key and content again
    LocalLanding(deployment / "client-c").put("track/a.jsonl", _events("a", 1))
    with dg.instance_for_test() as instance:
        track = Track(instance)
        assert len(track.tick()) == 3  # requested, but the runs never start
        time.sleep(2.2)
        again = track.tick()
        assert sorted(r.tags[TENANT_TAG] for r in again) == ["a", "b", "c"]
        for request in again:
            assert request.tags["ingest/why"] == "retry"
            files = _requested(deployment, request)
            assert [f.tenant_id for f in files] == [request.tags[TENANT_TAG]]
            assert track.run(request).success
    assert {(t, s) for t, _, _, s in _ledger(deployment)} == {
        ("a", "ingested"),
        ("b", "ingested"),
        ("c", "ingested"),
    }


def test_plan_recovery_splits_requests_by_tenant() -> None:
    now = datetime.now(UTC)

    def queued(tenant: str, i: int) -> LedgerFile:
        return LedgerFile(
            f"s3://{tenant}/track/{i}.jsonl", "e", tenant, "track", f"track/{i}.jsonl", now, 1,
            "retrying", 1, 1, None, None, now, None, now, None, None,
        )  # fmt: skip

    files = [queued(t, i) for i in range(3) for t in ("a", "b")]
    plan = plan_recovery(
        files,
        feed="track",
        now=now,
        run_info=lambda f: RunInfo("unknown"),
        feed_busy=False,
        retry=RetryPolicy(),
        grace=now - now,
        stuck_after=now - now,
        max_files_per_run=2,
        salt="x",
    )
    assert [(r.tenant, len(r.files)) for r in plan.requests] == [
        ("a", 2),
        ("a", 1),
        ("b", 2),
        ("b", 1),
    ]
    assert all({f.tenant_id for f in r.files} == {r.tenant} for r in plan.requests)
