"""Schedules of configured imports (ingest_pipeline/imports/schedule.py and the schedule, job and
asset of ingest_pipeline/defs/imports/definitions.py), through Dagster's own schedule testing API.

Ticks are evaluated at chosen times with `dg.build_schedule_context` on a real (SQLite) Dagster
instance; the earlier runs a schedule counts are runs stored in that instance with the
`dagster/schedule_name` tag, as the daemon stores them. The tick times are the ones Dagster's
cron iterator gives for the schedule's cron and time zone, so a wrong cron or time zone shows as
a wrong tick. Manual runs go through `execute_in_process` of the code location's job on a real
warehouse and a local folder.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml
from dagster._utils.schedules import cron_string_iterator
from dagster_aws.s3 import S3Resource

from ingest_pipeline.config import ConfigError, ImportConfig, parse_config
from ingest_pipeline.defs.imports.definitions import (
    SCHEDULE_TAG,
    build_import_asset,
    build_import_schedule,
)
from ingest_pipeline.defs.imports.definitions import defs as import_defs
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline.imports.folders import CHECK_FOLDER
from ingest_pipeline.imports.schedule import EVERY_MINUTE
from ingest_pipeline_tests.import_setup import EVENTS_MANIFEST, ImportSetup, csv_file, make_setup

pytestmark = pytest.mark.timeout(120)

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
ONE_TIME = "a one-time import (schedule: once) that has run"
IN_PROGRESS = "still in progress"

# --- helpers -----------------------------------------------------------------------------------

_names = itertools.count()


def new_import(**fields: Any) -> ImportConfig:
    """An events import validated as ingest.yaml's are; a fresh name each time, so that tests
    sharing one Dagster instance never see each other's runs."""
    values = {
        "name": f"shop{next(_names)}",
        "type": "events",
        "event_name": "purchase",
        "folder": "client",
        "manifest": "events.yaml",
        **fields,
    }
    return ImportConfig.model_validate(values)


def new_schedule(imp: ImportConfig) -> dg.ScheduleDefinition:
    job = dg.define_asset_job(imp.job_name, selection=[build_import_asset(imp)])
    return build_import_schedule(imp, job)


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    """A persistent instance (build_schedule_context refuses an ephemeral one)."""
    with dg.instance_for_test() as inst:
        yield inst


def add_run(
    instance: dg.DagsterInstance,
    job_name: str,
    *,
    schedule: str | None = None,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.SUCCESS,
) -> dg.DagsterRun:
    """A run of `job_name` as the daemon (schedule given) or an operator (none) leaves it."""
    tags = {SCHEDULE_TAG: schedule} if schedule else {}
    run = dg.DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), tags=tags, status=status)
    return instance.add_run(run)


def add_scheduled_runs(instance: dg.DagsterInstance, sched: dg.ScheduleDefinition, n: int) -> None:
    for _ in range(n):
        add_run(instance, sched.job_name, schedule=sched.name)


def evaluate(
    sched: dg.ScheduleDefinition, instance: dg.DagsterInstance, tick: dt.datetime
) -> dg.ScheduleExecutionData:
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context:
        return sched.evaluate_tick(context)


def run_key(sched: dg.ScheduleDefinition, instance: dg.DagsterInstance, tick: dt.datetime) -> str:
    """The tick's one RunRequest's run key (fails when the tick is skipped)."""
    data = evaluate(sched, instance, tick)
    assert data.skip_message is None, data.skip_message
    assert len(data.run_requests or []) == 1
    (request,) = data.run_requests
    assert request.tags["ingest/import"] == sched.job_name.removeprefix("import_")
    assert request.tags[SCHEDULE_TAG] == sched.name
    return request.run_key


def skipped(sched: dg.ScheduleDefinition, instance: dg.DagsterInstance, tick: dt.datetime) -> str:
    """The tick's skip reason (fails when the tick requests a run)."""
    data = evaluate(sched, instance, tick)
    assert not data.run_requests, data.run_requests
    assert data.skip_message
    return data.skip_message


def next_tick(sched: dg.ScheduleDefinition, after: dt.datetime) -> dt.datetime:
    """The schedule's first tick at or after `after`, as Dagster computes it from its cron and
    execution time zone (the scheduled_execution_time the daemon would pass)."""
    cron = sched.cron_schedule
    assert isinstance(cron, str)
    return next(cron_string_iterator(after.timestamp(), cron, sched.execution_timezone))


# --- 1. configuration --------------------------------------------------------------------------


def parse_import(tmp_path: Path, **fields: Any) -> ImportConfig:
    (tmp_path / "events.yaml").write_text(yaml.safe_dump(EVENTS_MANIFEST))
    entry = {
        "name": "shop",
        "type": "events",
        "event_name": "purchase",
        "folder": "client",
        "manifest": "events.yaml",
        **fields,
    }
    config = parse_config({"imports": [entry]}, base_dir=tmp_path)
    return config.import_config("shop")


@pytest.mark.parametrize(
    ("schedule", "cron"),
    [
        ("hourly", "0 * * * *"),
        ("daily", "0 0 * * *"),
        ("weekly", "0 0 * * 0"),
        ("monthly", "0 0 1 * *"),
        ("30 6 * * 1-5", "30 6 * * 1-5"),
        ("  */15   8-18 * * MON-FRI ", "*/15 8-18 * * MON-FRI"),
        ("once", EVERY_MINUTE),
    ],
)
def test_each_frequency_gives_its_cron(tmp_path: Path, schedule: str, cron: str) -> None:
    imp = parse_import(tmp_path, schedule=schedule)
    sched = new_schedule(imp)
    assert sched.cron_schedule == cron
    assert sched.execution_timezone == "UTC"


def test_the_default_schedule_is_once_every_minute_until_it_has_run(tmp_path: Path) -> None:
    imp = parse_import(tmp_path)
    assert imp.schedule == "once"
    assert new_schedule(imp).cron_schedule == "* * * * *"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "schedule",
            "every day",
            "imports[0].schedule: 'every day' is not hourly, daily, weekly, monthly or a "
            "five-field cron string",
        ),
        ("schedule", "0 0 * *", "imports[0].schedule: '0 0 * *' is not hourly"),
        ("schedule", "Daily", "imports[0].schedule: 'Daily' is not hourly"),
        ("schedule", "@daily", "imports[0].schedule: '@daily' is not hourly"),
        (
            "timezone",
            "Mars/Olympus_Mons",
            "imports[0].timezone: 'Mars/Olympus_Mons' is not an IANA time zone",
        ),
        ("timezone", "+02:00", "imports[0].timezone: '+02:00' is not an IANA time zone"),
        ("start_at", "tomorrow", "imports[0].start_at: 'tomorrow' is not an ISO 8601 date"),
        ("start_at", "2026-02-30", "imports[0].start_at: '2026-02-30' is not an ISO 8601"),
        ("end_at", "31/12/2026", "imports[0].end_at: '31/12/2026' is not an ISO 8601 date"),
        ("end_at", "2026-12-31T25:00", "imports[0].end_at: '2026-12-31T25:00' is not an ISO"),
        ("end_after_runs", 0, "imports[0].end_after_runs: "),
    ],
)
def test_a_bad_schedule_timezone_or_time_is_a_configuration_error_naming_it(
    tmp_path: Path, field: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_import(tmp_path, **{field: value})
    assert message in str(caught.value)


@pytest.mark.parametrize("cron", ["61 * * * *", "abc * * * *", "0 0 * * 8", "*/0 * * * *"])
def test_a_cron_dagster_refuses_is_a_configuration_error(tmp_path: Path, cron: str) -> None:
    from dagster._utils.schedules import is_valid_cron_string

    assert not is_valid_cron_string(cron)
    with pytest.raises(ConfigError, match=r"imports\[0\]\.schedule"):
        parse_import(tmp_path, schedule=cron)


@pytest.mark.parametrize("cron", ["0 9 * * mon-fri", "*/15 0-6,22 1 jan,jul sun", "0 0 1 */3 *"])
def test_a_cron_the_config_accepts_dagster_accepts(tmp_path: Path, cron: str) -> None:
    from dagster._utils.schedules import is_valid_cron_string

    imp = parse_import(tmp_path, schedule=cron)
    assert imp.schedule == cron
    assert is_valid_cron_string(imp.schedule)


def test_times_without_offset_are_in_the_imports_timezone_and_offsets_are_kept(
    tmp_path: Path,
) -> None:
    from ingest_pipeline.imports.schedule import local_time

    imp = parse_import(tmp_path, timezone="Europe/Paris", start_at="2026-03-02T09:00")
    assert local_time(imp, "2026-03-02T09:00") == dt.datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert local_time(imp, "2026-07-02T09:00") == dt.datetime(2026, 7, 2, 7, 0, tzinfo=UTC)
    assert local_time(imp, "2026-03-02T09:00+00:00") == dt.datetime(2026, 3, 2, 9, tzinfo=UTC)


# --- 2. ticks of each frequency ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "timezone", "after", "tick"),
    [
        (
            "hourly",
            "UTC",
            dt.datetime(2026, 3, 2, 5, 10, tzinfo=UTC),
            dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC),
        ),
        (
            "daily",
            "UTC",
            dt.datetime(2026, 3, 2, 5, 10, tzinfo=UTC),
            dt.datetime(2026, 3, 3, 0, 0, tzinfo=UTC),
        ),
        # 2026-03-01 is a Sunday
        (
            "weekly",
            "UTC",
            dt.datetime(2026, 2, 25, 12, 0, tzinfo=UTC),
            dt.datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
        ),
        (
            "monthly",
            "UTC",
            dt.datetime(2026, 2, 10, 12, 0, tzinfo=UTC),
            dt.datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
        ),
        # 2026-03-02 is a Monday
        (
            "30 6 * * 1-5",
            "UTC",
            dt.datetime(2026, 2, 28, 12, 0, tzinfo=UTC),
            dt.datetime(2026, 3, 2, 6, 30, tzinfo=UTC),
        ),
        (
            "once",
            "UTC",
            dt.datetime(2026, 3, 2, 10, 16, 30, tzinfo=UTC),
            dt.datetime(2026, 3, 2, 10, 17, tzinfo=UTC),
        ),
        # midnight in Paris: 23:00 UTC in winter (CET), 22:00 UTC in summer (CEST)
        (
            "daily",
            "Europe/Paris",
            dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC),
            dt.datetime(2026, 3, 3, 0, 0, tzinfo=PARIS),
        ),
        (
            "daily",
            "Europe/Paris",
            dt.datetime(2026, 6, 30, 12, 0, tzinfo=UTC),
            dt.datetime(2026, 7, 1, 0, 0, tzinfo=PARIS),
        ),
    ],
)
def test_each_frequency_ticks_at_its_times_and_requests_a_run(
    instance: dg.DagsterInstance,
    schedule: str,
    timezone: str,
    after: dt.datetime,
    tick: dt.datetime,
) -> None:
    imp = new_import(schedule=schedule, timezone=timezone)
    sched = new_schedule(imp)
    assert sched.name == f"import_{imp.name}_schedule"
    assert sched.job_name == f"import_{imp.name}"
    assert sched.execution_timezone == timezone
    assert sched.default_status == dg.DefaultScheduleStatus.RUNNING

    at = next_tick(sched, after)
    assert at == tick
    assert at.utcoffset() == tick.utcoffset()  # given in the schedule's own time zone
    assert run_key(sched, instance, at) == f"{imp.name}-{tick.isoformat()}"
    # Calling the schedule (the decorator's invocation) says the same.
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=at) as context:
        request = sched(context)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"{imp.name}-{tick.isoformat()}"


def test_paris_winter_midnight_run_key_is_the_local_time(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="daily", timezone="Europe/Paris")
    sched = new_schedule(imp)
    at = next_tick(sched, dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    assert at.astimezone(UTC) == dt.datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    assert run_key(sched, instance, at) == f"{imp.name}-2026-03-03T00:00:00+01:00"


def test_start_and_end_without_offset_are_read_in_the_schedules_timezone(
    instance: dg.DagsterInstance,
) -> None:
    # 09:00 and 18:00 in Paris on 2026-03-02 (CET, UTC+1) are 08:00 and 17:00 UTC.
    imp = new_import(
        schedule="*/30 * * * *",
        timezone="Europe/Paris",
        start_at="2026-03-02T09:00",
        end_at="2026-03-02T18:00",
    )
    sched = new_schedule(imp)
    assert sched.execution_timezone == "Europe/Paris"

    first = next_tick(sched, dt.datetime(2026, 3, 2, 7, 10, tzinfo=UTC))
    assert first == dt.datetime(2026, 3, 2, 8, 30, tzinfo=PARIS)  # 07:30 UTC
    assert skipped(sched, instance, first) == (
        "not before 2026-03-02T09:00 (Europe/Paris; start_at)"
    )
    # 08:00 UTC is 09:00 in Paris: the start itself runs; so does 08:30 UTC (09:30 Paris),
    # which would still be before a 09:00 read as UTC.
    for utc in (
        dt.datetime(2026, 3, 2, 8, 0, tzinfo=UTC),
        dt.datetime(2026, 3, 2, 8, 30, tzinfo=UTC),
    ):
        at = next_tick(sched, utc)
        assert at == utc
        assert run_key(sched, instance, at) == f"{imp.name}-{utc.astimezone(PARIS).isoformat()}"
    # 16:30 UTC (17:30 Paris) runs; 17:00 UTC is 18:00 in Paris: ended, though before 18:00 UTC.
    assert run_key(sched, instance, next_tick(sched, dt.datetime(2026, 3, 2, 16, 30, tzinfo=UTC)))
    end = next_tick(sched, dt.datetime(2026, 3, 2, 16, 45, tzinfo=UTC))
    assert end == dt.datetime(2026, 3, 2, 18, 0, tzinfo=PARIS)
    assert skipped(sched, instance, end) == (
        "the import ended at 2026-03-02T18:00 (Europe/Paris; end_at)"
    )


def test_start_at_with_an_offset_is_that_instant(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="hourly", timezone="Europe/Paris", start_at="2026-03-02T09:00Z")
    sched = new_schedule(imp)
    # 09:00 Paris is 08:00 UTC: still before the start at 09:00 UTC.
    assert "start_at" in skipped(sched, instance, dt.datetime(2026, 3, 2, 9, 0, tzinfo=PARIS))
    assert run_key(sched, instance, dt.datetime(2026, 3, 2, 10, 0, tzinfo=PARIS))


# --- 3. once -----------------------------------------------------------------------------------


def test_once_runs_at_the_first_tick_then_never_again(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="once")
    sched = new_schedule(imp)
    tick = next_tick(sched, dt.datetime(2026, 3, 2, 10, 0, 5, tzinfo=UTC))
    assert run_key(sched, instance, tick) == f"{imp.name}-2026-03-02T10:01:00+00:00"
    # An operator's manual run is not the schedule's: the one-time run is still to come.
    add_run(instance, sched.job_name)
    assert run_key(sched, instance, tick)

    add_scheduled_runs(instance, sched, 1)
    for minutes in (1, 2, 60 * 24 * 40):
        later = tick + dt.timedelta(minutes=minutes)
        reason = skipped(sched, instance, later)
        assert reason == ONE_TIME
        assert "one-time import" in reason and "has run" in reason


def test_once_a_failed_scheduled_run_still_counts_as_its_run(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="once")
    sched = new_schedule(imp)
    add_run(instance, sched.job_name, schedule=sched.name, status=dg.DagsterRunStatus.FAILURE)
    assert skipped(sched, instance, dt.datetime(2026, 3, 2, 10, 1, tzinfo=UTC)) == ONE_TIME


def test_once_with_a_future_start_waits_for_it(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="once", start_at="2026-03-02T09:00")
    sched = new_schedule(imp)
    for tick in (
        dt.datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        dt.datetime(2026, 3, 2, 8, 58, tzinfo=UTC),
        next_tick(sched, dt.datetime(2026, 3, 2, 8, 58, 30, tzinfo=UTC)),  # 08:59
    ):
        assert skipped(sched, instance, tick) == "not before 2026-03-02T09:00 (UTC; start_at)"
    at = next_tick(sched, dt.datetime(2026, 3, 2, 8, 59, 30, tzinfo=UTC))
    assert at == dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert run_key(sched, instance, at) == f"{imp.name}-2026-03-02T09:00:00+00:00"
    after = dt.datetime(2026, 3, 2, 9, 1, tzinfo=UTC)
    assert run_key(sched, instance, after) == f"{imp.name}-2026-03-02T09:01:00+00:00"

    add_scheduled_runs(instance, sched, 1)
    assert skipped(sched, instance, after + dt.timedelta(minutes=1)) == ONE_TIME


# --- 4. end_after_runs -------------------------------------------------------------------------


def test_end_after_runs_counts_the_schedules_runs_only(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="hourly", end_after_runs=2)
    sched = new_schedule(imp)
    tick = dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    assert run_key(sched, instance, tick)  # 0 runs before
    add_scheduled_runs(instance, sched, 1)
    assert run_key(sched, instance, tick + dt.timedelta(hours=1))  # 1 run before
    # Manual runs of the same job, and the runs of another import's schedule, do not count.
    for _ in range(3):
        add_run(instance, sched.job_name)
    other = new_schedule(new_import(schedule="hourly"))
    add_run(instance, other.job_name, schedule=other.name)
    add_run(instance, other.job_name, schedule=other.name)
    assert run_key(sched, instance, tick + dt.timedelta(hours=2))

    add_scheduled_runs(instance, sched, 1)
    for hours in (3, 4, 24 * 365):
        reason = skipped(sched, instance, tick + dt.timedelta(hours=hours))
        assert reason == "the import ended after 2 run(s) (end_after_runs)"
    # The other import is not ended by this one's runs.
    assert run_key(other, instance, tick)


# --- 5. end_at ---------------------------------------------------------------------------------


def test_end_at_ends_the_schedule_at_that_time(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="hourly", end_at="2026-03-02T12:00")
    sched = new_schedule(imp)
    last = next_tick(sched, dt.datetime(2026, 3, 2, 10, 30, tzinfo=UTC))
    assert run_key(sched, instance, last) == f"{imp.name}-2026-03-02T11:00:00+00:00"
    for tick in (
        dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC),
        dt.datetime(2026, 3, 2, 13, 0, tzinfo=UTC),
        dt.datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
    ):
        reason = skipped(sched, instance, tick)
        assert reason == "the import ended at 2026-03-02T12:00 (UTC; end_at)"


def test_end_at_as_a_date_ends_at_the_start_of_that_day(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="hourly", end_at="2026-03-02")
    sched = new_schedule(imp)
    assert run_key(sched, instance, dt.datetime(2026, 3, 1, 23, 0, tzinfo=UTC))
    assert "end_at" in skipped(sched, instance, dt.datetime(2026, 3, 2, 0, 0, tzinfo=UTC))


# --- 6. a run in progress ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
)
def test_a_run_in_progress_skips_the_tick(
    instance: dg.DagsterInstance, status: dg.DagsterRunStatus
) -> None:
    imp = new_import(schedule="hourly")
    sched = new_schedule(imp)
    tick = dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    # Another import's run in progress does not hold this one back.
    add_run(instance, new_import().job_name, status=dg.DagsterRunStatus.STARTED)
    assert run_key(sched, instance, tick)

    run = add_run(instance, sched.job_name, schedule=sched.name, status=status)
    reason = skipped(sched, instance, tick + dt.timedelta(hours=1))
    assert IN_PROGRESS in reason
    assert reason == (
        "the import's previous run is still in progress; the next tick takes new files"
    )

    instance.report_run_failed(run)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert run_key(sched, instance, tick + dt.timedelta(hours=2))


def test_a_manual_run_in_progress_also_skips_the_tick(instance: dg.DagsterInstance) -> None:
    imp = new_import(schedule="daily")
    sched = new_schedule(imp)
    add_run(instance, sched.job_name, status=dg.DagsterRunStatus.STARTED)
    assert IN_PROGRESS in skipped(sched, instance, dt.datetime(2026, 3, 2, 0, 0, tzinfo=UTC))


# --- 7, 8, 9. the code location and manual runs ------------------------------------------------

EVENTS_HEADER = ["USER_ID", "EVENT_TS", "AMOUNT", "IS_PAID", "PAID_AT", "PLAN", "INTERNAL"]
EVENT_ROWS = [
    ["u-1", "2026-01-01 10:00:00", "12.50", "true", "02/01/2026", "gold", "x"],
    ["u-2", "2026-01-01 11:30:00", "3", "false", "", "free", "y"],
    ["u-3", "2026-01-01 11:45:10", "99.99", "true", "31/12/2025", "gold", "z"],
]


def import_entry(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "events",
        "event_name": "purchase",
        "folder": "client",
        "manifest": "events.yaml",
        **fields,
    }


@dataclass
class Location:
    setup: ImportSetup
    own: dg.Definitions  # what defs/imports/definitions.py's `defs()` returns
    defs: dg.Definitions  # with the resources the code location binds (here: the set-up's)


def location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, imports: list[dict[str, Any]]
) -> Location:
    setup = make_setup(tmp_path / "project", imports, {"events.yaml": EVENTS_MANIFEST})
    monkeypatch.setenv("INGEST_CONFIG", str(setup.config_path))
    monkeypatch.delenv("INGEST_SMTP_HOST", raising=False)  # no e-mail
    own = import_defs()
    ingest = IngestResource(
        s3=S3Resource(),
        warehouse_path=str(setup.warehouse_path),
        lake_url=str(setup.root / "lake"),
    )
    bound = dg.Definitions.merge(
        own, dg.Definitions(resources={"ingest": ingest}, executor=dg.in_process_executor)
    )
    return Location(setup, own, bound)


def test_the_code_location_has_a_job_schedule_and_asset_per_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance
) -> None:
    loc = location(
        tmp_path,
        monkeypatch,
        [
            import_entry("shop", schedule="daily", timezone="Europe/Paris"),
            import_entry("signups", event_name="signup", schedule="hourly"),
        ],
    )
    own = loc.own
    assert isinstance(own, dg.Definitions)
    assert sorted(j.name for j in own.jobs or []) == ["import_shop", "import_signups"]
    assert sorted(s.name for s in own.schedules or []) == [
        "import_shop_schedule",
        "import_signups_schedule",
    ]
    assert sorted(a.key.to_user_string() for a in own.assets or []) == [
        "shop_import",
        "signups_import",
    ]

    d = loc.defs
    key = dg.AssetKey("shop_import")
    assert d.resolve_assets_def(key).group_names_by_key[key] == "imports"
    job = d.resolve_job_def("import_shop")
    assert job.asset_layer.executable_asset_keys == {key}
    sched = d.resolve_schedule_def("import_shop_schedule")
    assert sched.job_name == "import_shop"
    assert (sched.cron_schedule, sched.execution_timezone) == ("0 0 * * *", "Europe/Paris")
    other = d.resolve_schedule_def("import_signups_schedule")
    assert other.job_name == "import_signups"
    assert (other.cron_schedule, other.execution_timezone) == ("0 * * * *", "UTC")
    assert (
        d.resolve_assets_def("signups_import").group_names_by_key[dg.AssetKey("signups_import")]
        == "imports"
    )

    tick = next_tick(sched, dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    assert run_key(sched, instance, tick) == "shop-2026-03-03T00:00:00+01:00"


def test_without_imports_the_code_location_has_no_import_definitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = location(tmp_path, monkeypatch, []).own
    assert not own.jobs and not own.schedules and not own.assets


def materialization(result: dg.ExecuteInProcessResult, name: str) -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node(f"{name}_import")
    return {k: v.value for k, v in mat.metadata.items()}


def test_a_manual_run_imports_new_files_whatever_the_schedule_and_its_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = location(
        tmp_path,
        monkeypatch,
        [import_entry("shop", schedule="hourly", end_at="2020-01-01T00:00", end_after_runs=1)],
    )
    setup = loc.setup
    folder = setup.root / "client"
    folder.mkdir()
    file_name = "purchase_20260101120000.csv"
    (folder / file_name).write_bytes(csv_file(EVENTS_HEADER, EVENT_ROWS))
    (folder / "signup_20260101120000.csv").write_bytes(csv_file(EVENTS_HEADER, EVENT_ROWS))

    sched = loc.defs.resolve_schedule_def("import_shop_schedule")
    job = loc.defs.resolve_job_def("import_shop")
    with dg.instance_for_test() as instance:
        add_run(instance, "import_shop", schedule=sched.name)
        # The schedule is over, by both of its ends ...
        tick = dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
        assert "end_at" in skipped(sched, instance, tick)
        ended = new_schedule(new_import(schedule="hourly", end_after_runs=1))
        add_scheduled_runs(instance, ended, 1)
        assert "end_after_runs" in skipped(ended, instance, tick)
        # ... a manual run still takes the folder's new files.
        result = job.execute_in_process(instance=instance)
        assert result.success
        meta = materialization(result, "shop")
        assert meta["files"] == 1
        assert meta["files_failed"] == 0
        assert meta["files_already_processed"] == 0
        assert meta["rows_loaded"] == len(EVENT_ROWS)
        assert meta["rows_rejected"] == 0
        assert meta["folder"] == "client"
        report = meta["file_report"]
        assert f"| {file_name} | ingested | 3 | 3 | 0 | 0 |" in report
        assert "signup_20260101120000.csv" not in report  # another import's file

        files = setup.query(
            "SELECT feed, landing_key, status, rows_loaded, run_id, source_uri FROM ingested_files"
        )
        assert len(files) == 1
        (row,) = files
        assert (row["feed"], row["landing_key"], row["status"], row["rows_loaded"]) == (
            "import_shop",
            file_name,
            "ingested",
            3,
        )
        assert row["run_id"] == result.run_id
        assert Path(row["source_uri"]).resolve() == (folder / file_name).resolve()
        events = setup.query(
            "SELECT contact_key, event_text, event_timestamp, properties->>'plan' AS plan, "
            "source_uri FROM events ORDER BY contact_key"
        )
        assert [(e["contact_key"], e["event_text"], e["plan"]) for e in events] == [
            ("u-1", "purchase", "gold"),
            ("u-2", "purchase", "free"),
            ("u-3", "purchase", "gold"),
        ]
        assert events[0]["event_timestamp"] == dt.datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
        assert {e["source_uri"] for e in events} == {row["source_uri"]}

        # A second manual run: nothing new.
        again = job.execute_in_process(instance=instance)
        assert again.success
        meta = materialization(again, "shop")
        assert meta["files"] == 0
        assert meta["files_already_processed"] == 1
        assert meta["file_report"] == "No new files."
        assert len(setup.query("SELECT * FROM events")) == len(EVENT_ROWS)
        assert len(setup.query("SELECT * FROM ingested_files")) == 1

        # Manual runs are not the schedule's: it still counts its one run.
        scheduled = dg.RunsFilter(job_name="import_shop", tags={SCHEDULE_TAG: sched.name})
        assert instance.get_runs_count(scheduled) == 1
        assert instance.get_runs_count(dg.RunsFilter(job_name="import_shop")) == 3


def test_a_folder_that_cannot_be_listed_fails_the_manual_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = location(tmp_path, monkeypatch, [import_entry("shop", folder="not_there")])
    missing = loc.setup.root / "not_there"
    with dg.instance_for_test() as instance:
        result = loc.defs.resolve_job_def("import_shop").execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert result.success is False
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data
    assert data.user_failure_data is not None
    description = data.user_failure_data.description or ""
    assert CHECK_FOLDER == "Please check the folder path and try again"
    assert "Please check the folder path and try again" in description
    # the whole cause, the folder's full path included
    assert str(missing) in description
    assert data.user_failure_data.metadata["folder"].value == "not_there"
    assert data.user_failure_data.metadata["files"].value == 0
    assert description.startswith("import shop failed: Please check the folder path")
    assert not missing.exists()  # the run did not create it
    assert loc.setup.query("SELECT * FROM ingested_files") == []
