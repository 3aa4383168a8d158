"""The Dagster UI in a real browser: `dagster-webserver` and `dagster-daemon run` on one temporary
DAGSTER_HOME, Debian's Chromium driven by Playwright.

(a) the asset catalog lists the feeds' assets, and its search finds the track ones; (b) a track
file with bad rows landed in the local landing folder is ingested by the sensor, and its
partition's page shows the counts and the rejected rows with their reasons; (c) a two-day
backfill launched from the asset's Materialize… dialog completes successfully.

Screenshots of every step (and of a failure) go to $INGEST_TEST_ARTIFACTS, else
test-artifacts/ui/. CI installs Chromium and playwright: without them this test fails, saying
which is missing; INGEST_SKIP_BROWSER=1 skips it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pytest

from ingest_pipeline import warehouse
from ingest_pipeline_tests.daemon import Daemon, dagster_home, running_daemon
from ingest_pipeline_tests.dagster_ui import (
    CHROMIUM_ARGS,
    Webserver,
    artifacts_dir,
    chromium_path,
    running_webserver,
)
from ingest_pipeline_tests.helpers import ndjson

if os.environ.get("INGEST_SKIP_BROWSER") == "1":
    pytest.skip("INGEST_SKIP_BROWSER=1: browser test skipped", allow_module_level=True)

T = TypeVar("T")

STARTUP_TIMEOUT = 90  # webserver answering, code location loaded
INGEST_TIMEOUT = 120  # the landed file parsed (bronze), then merged
# The backfill daemon looks at backfills every 30 s (fixed in Dagster): one look submits the
# run, a later one marks the backfill done.
BACKFILL_TIMEOUT = 150
UI_TIMEOUT_MS = 60_000  # one page or element (the UI is slow on 2 busy cores)

LANDED_KEY = "track/ui-bad-rows.jsonl"
GOOD_ROWS = [
    {"event_text": "signed up", "event_timestamp": 1764000000, "contact_key": "ui-u1"},
    {"event_text": "viewed page", "event_timestamp": 1764000060, "contact_key": "ui-u1"},
    {"event_text": "signed up", "event_timestamp": 1764000120, "contact_key": "ui-u2"},
]
BAD_ROWS = [
    '{"event_timestamp": 1764000180, "contact_key": "ui-u3"}',  # line 4: no event_text
    "this line is not json",  # line 5
]
FINAL = ("ingested", "failed", "skipped", "vanished")  # ledger statuses (ledger.py)
PAST_PARSING = ("parsed", *FINAL)
REASON_MISSING = "missing required field 'event_text'"
REASON_NOT_JSON = "invalid JSON"


def _require_browser() -> tuple[Any, str]:
    """Playwright's sync API and the system Chromium, or a failure that says what is missing."""
    try:
        from playwright import sync_api
    except ImportError as exc:
        pytest.fail(
            f"playwright is not installed ({exc}): pip install 'playwright>=1.50,<2' (the test "
            "extras); never `playwright install`, the system Chromium is used. "
            "INGEST_SKIP_BROWSER=1 skips this test.",
            pytrace=False,
        )
    chromium = chromium_path()
    if chromium is None:
        where = os.environ.get("INGEST_CHROMIUM") or "/usr/bin/chromium nor on PATH"
        pytest.fail(
            f"no Chromium at {where}: apt-get install chromium (or set INGEST_CHROMIUM). "
            "INGEST_SKIP_BROWSER=1 skips this test.",
            pytrace=False,
        )
    return sync_api, chromium


class Steps:
    """Numbered screenshots and a timed log; a failure's screenshot names the last step."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.n, self.step, self.page = folder, 0, "start", None
        self.t0 = time.monotonic()
        for old in folder.glob("*.png"):
            old.unlink()

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def shot(self, name: str, locator: Any = None) -> Path:
        self.n += 1
        self.step = name
        path = self.folder / f"{self.n:02d}-{name}.png"
        if locator is not None:
            locator.scroll_into_view_if_needed()
        self.page.screenshot(path=str(path))
        self.log(f"screenshot {path.name}")
        return path

    def failure_shot(self) -> Path | None:
        if self.page is None:
            return None
        path = self.folder / f"failure-after-{self.n:02d}-{self.step}.png"
        try:
            self.page.screenshot(path=str(path))
        except Exception:  # the page or the browser itself may be what broke
            return None
        return path


@contextmanager
def _services(tmp_path: Path) -> Iterator[tuple[Webserver, Daemon, Path]]:
    today = datetime.now(UTC).date()
    env = dict(
        os.environ,
        INGEST_LANDING_URL=str(tmp_path / "landing"),
        INGEST_LAKE_URL=str(tmp_path / "lake"),
        INGEST_WAREHOUSE_PATH=str(tmp_path / "warehouse.duckdb"),
        INGEST_EXPORT_URL=str(tmp_path / "exports"),
        INGEST_SENSOR_INTERVAL_SECONDS="3",
        # The first daily partition: the UI shows six days, not years of them.
        INGEST_PARTITIONS_START_DATE=(today - timedelta(days=5)).isoformat(),
    )
    env["DAGSTER_HOME"] = str(dagster_home(tmp_path, env))
    with running_daemon(tmp_path, env) as daemon, running_webserver(tmp_path, env) as web:
        web.wait_ready(timeout=STARTUP_TIMEOUT)
        web.wait_location_loaded(timeout=STARTUP_TIMEOUT)
        yield web, daemon, Path(env["DAGSTER_HOME"])


def _land(landing: Path, key: str, body: bytes) -> None:
    """As an upload tool does: a hidden temporary file renamed into place."""
    path = landing / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(body)
    os.replace(tmp, path)


def _ledger_row(wh_path: Path, key: str) -> dict[str, Any] | None:
    try:
        with warehouse.connect(wh_path, read_only=True, wait_seconds=5) as con:
            cur = con.execute(
                "SELECT status, rows_read, rows_rejected, landing_date, error "
                "FROM ingested_files WHERE landing_key = ?",
                [key],
            )
            row = cur.fetchone()
            return (
                None
                if row is None
                else dict(zip([d[0] for d in cur.description], row, strict=True))
            )
    except (duckdb.Error, OSError):
        return None  # not created yet, or a writer holds it: look again


def _wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, daemon: Daemon, web: Webserver
) -> T:
    """probe() until it returns something, the services alive, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        assert daemon.alive(), "dagster-daemon exited:\n" + daemon.tail(3000)
        assert web.alive(), "dagster-webserver exited:\n" + web.tail(3000)
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s\ndaemon log:\n{daemon.tail(3000)}")
        time.sleep(1)


def _asset_link(page: Any, name: str) -> Any:
    """The catalog row's link to asset `name`, by its visible text."""
    return page.locator(f'a[href="/assets/{name}"]').filter(has=page.get_by_text(name, exact=True))


def _search_catalog(page: Any, text: str) -> None:
    """Type into the catalog's search box (a CodeMirror editor) and search: key contains text."""
    page.locator(".CodeMirror").first.click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"asset-selection=.*" + re.escape(text)))
    # Click outside the box (the blank middle of the page's header bar), so that its
    # suggestions do not cover the first row in the screenshot.
    page.mouse.click(page.viewport_size["width"] // 2, 20)
    page.get_by_text("to navigate", exact=True).wait_for(state="hidden")  # the suggestions


def _metadata_value(page: Any, key: str) -> Any:
    """The value cell of metadata entry `key` in a partition's metadata table."""
    row = page.locator("tr", has=page.get_by_text(key, exact=True))
    return row.locator("td").nth(1)


@pytest.mark.timeout(420)
def test_dagster_ui_in_a_browser(tmp_path: Path) -> None:
    sync_api, chromium = _require_browser()
    expect = sync_api.expect
    expect.set_options(timeout=UI_TIMEOUT_MS)
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    steps = Steps(artifacts_dir())
    wh_path = tmp_path / "warehouse.duckdb"
    with (
        _services(tmp_path) as (web, daemon, home),
        DagsterInstance.from_config(str(home)) as instance,
        sync_api.sync_playwright() as pw,
    ):
        steps.log(f"webserver {web.url} and daemon up")
        # Landed now, so the sensor works on it while the catalog is looked at.
        _land(tmp_path / "landing", LANDED_KEY, ndjson([*GOOD_ROWS, *BAD_ROWS]))
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        # Where the UI remembers that its "Join the Dagster community" dialog was dismissed.
        context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = steps.page = context.new_page()
        try:
            # (a) The catalog lists the feeds' assets; its search finds the track ones.
            page.goto(f"{web.url}/assets")
            expect(_asset_link(page, "account_bronze")).to_be_visible()
            expect(_asset_link(page, "account_warehouse")).to_be_visible()
            steps.shot("catalog")
            _search_catalog(page, "bronze")
            for feed in ("identify", "track", "group", "kissmetrics"):
                expect(_asset_link(page, f"{feed}_bronze")).to_be_visible()
            expect(_asset_link(page, "track_warehouse")).to_have_count(0)
            steps.shot("catalog-search-bronze")
            _search_catalog(page, "track")
            expect(_asset_link(page, "track_bronze")).to_be_visible()
            expect(_asset_link(page, "track_warehouse")).to_be_visible()
            expect(_asset_link(page, "identify_bronze")).to_have_count(0)
            steps.shot("catalog-search-track")
            page.goto("about:blank")  # no page polling the webserver while the run works

            # (b) The sensor ingests the file with its two bad rows: the partition's page shows
            # the counts and the rejected rows with their reasons.
            def parsed() -> dict[str, Any] | None:
                row = _ledger_row(wh_path, LANDED_KEY)
                done = instance.get_latest_materialization_event(AssetKey("track_bronze"))
                return row if row and row["status"] in PAST_PARSING and done else None

            row = _wait_for(f"{LANDED_KEY} parsed", parsed, INGEST_TIMEOUT, daemon, web)
            steps.log(f"ledger: {row}")
            assert row["status"] in ("parsed", "ingested"), row
            assert (row["rows_read"], row["rows_rejected"]) == (5, 2), row
            day: date = row["landing_date"]
            partition = day.isoformat()
            event = instance.get_latest_materialization_event(AssetKey("track_bronze"))
            assert event.asset_materialization.partition == partition

            page.goto(f"{web.url}/assets/track_bronze?view=partitions&partition={partition}")
            expect(page.get_by_text("Latest materialization").first).to_be_visible()
            expect(_metadata_value(page, "files")).to_have_text("1")
            expect(_metadata_value(page, "rows_read")).to_have_text("5")
            expect(_metadata_value(page, "rows_valid")).to_have_text("3")
            expect(_metadata_value(page, "rows_rejected")).to_have_text("2")
            steps.shot("track-bronze-partition-counts")
            sample = _metadata_value(page, "rejected_sample")
            expect(sample).to_contain_text(LANDED_KEY)
            expect(sample).to_contain_text(REASON_MISSING)
            expect(sample).to_contain_text(REASON_NOT_JSON)
            expect(sample).to_contain_text("this line is not json")
            steps.shot("track-bronze-rejected-sample", sample)

            # The merge the sensor asks for next is done before the backfill re-reads the file.
            def final() -> dict[str, Any] | None:
                row = _ledger_row(wh_path, LANDED_KEY)
                return row if row and row["status"] in FINAL else None

            row = _wait_for(f"{LANDED_KEY} merged", final, INGEST_TIMEOUT, daemon, web)
            steps.log(f"ledger: {row}")
            assert row["status"] == "ingested", row

            # (c) A backfill of two days from the asset's Materialize… dialog: the day before
            # the file landed and that day. A local file's landing time is its ctime, which
            # cannot be set back: the earlier day has no file, the later re-ingests ours.
            first, last = (day - timedelta(days=1)).isoformat(), partition
            page.goto(f"{web.url}/assets/track_bronze")
            # The button's accessible name starts with its icon's ("… Materialize…").
            page.get_by_role("button", name=re.compile(r"Materialize…$")).click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
            expect(dialog).to_be_visible()
            # The partition field takes Dagster's partition selection syntax: [a...b] is a
            # range (a bare a...b is a syntax error in this version).
            selection = dialog.locator("input[type=text]").first
            selection.click()
            selection.fill(f"[{first}...{last}]")
            selection.press("Enter")
            expect(dialog.get_by_text("2 partitions", exact=True)).to_be_visible()
            launch = dialog.get_by_role("button", name="Launch backfill")
            expect(launch).to_be_enabled()
            steps.shot("launch-backfill-dialog")
            launch.click()
            toast = page.get_by_text(re.compile(r"Created backfill \w+"))
            expect(toast).to_be_visible()
            steps.shot("backfill-created")
            backfill_id = re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)
            steps.log(f"backfill {backfill_id} launched from the UI")

            page.goto(f"{web.url}/runs/b/{backfill_id}")
            expect(page.get_by_text(f"{first}...{last}")).to_be_visible()
            steps.shot("backfill-page")
            # Nothing to see until the daemon is done: a page left open polls the webserver,
            # which takes CPU from the run (2 cores).
            page.goto("about:blank")

            def finished() -> Any:
                backfill = instance.get_backfill(backfill_id)
                assert backfill is not None, backfill_id
                if backfill.status in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING):
                    return None
                return backfill

            backfill = _wait_for(
                f"backfill {backfill_id} finished", finished, BACKFILL_TIMEOUT, daemon, web
            )
            steps.log(f"backfill {backfill_id}: {backfill.status}")
            runs = instance.get_runs(RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
            assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, (
                backfill.status,
                [(r.run_id, r.status) for r in runs],
            )
            # One run (the assets' single_run backfill policy) that materialized both days.
            assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS], runs
            records = instance.fetch_materializations(AssetKey("track_bronze"), limit=20).records
            by_day = {r.partition_key: r for r in records if r.run_id == runs[0].run_id}
            assert set(by_day) == {first, last}, by_day

            page.goto(f"{web.url}/runs/b/{backfill_id}")
            status = page.get_by_text("Status", exact=True).locator("xpath=following-sibling::*[1]")
            expect(status).to_have_text("Succeeded")
            expect(page.get_by_text("100% completed")).to_be_visible()
            steps.shot("backfill-succeeded")

            # The re-ingested day: the same counts, now from the backfill's run.
            page.goto(f"{web.url}/assets/track_bronze?view=partitions&partition={partition}")
            expect(page.get_by_text(runs[0].run_id[:8]).first).to_be_visible()
            expect(_metadata_value(page, "rows_read")).to_have_text("5")
            expect(_metadata_value(page, "rows_rejected")).to_have_text("2")
            expect(_metadata_value(page, "rejected_sample")).to_contain_text(REASON_MISSING)
            steps.shot("track-bronze-after-backfill")
        except BaseException:
            shot = steps.failure_shot()
            print(f"failure screenshot: {shot}")
            print("webserver log:\n" + web.tail(2000))
            print("daemon log:\n" + daemon.tail(3000))
            raise
        finally:
            context.close()
            browser.close()
            steps.log("browser closed; stopping the webserver and the daemon")
    steps.log(f"done; screenshots in {steps.folder}")
