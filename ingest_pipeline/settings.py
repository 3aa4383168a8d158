"""Environment variables of SPEC section 2, read in one place.

Values are read when asked for (not at import) so tests can point the pipeline at temporary
folders and servers by setting the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    landing_url: str
    lake_url: str
    warehouse_path: str
    export_url: str
    config_path: str | None
    sensor_interval_seconds: int
    tenant: str
    max_files_per_run: int
    max_runs_per_tick: int
    sensor_lookback_seconds: int
    max_attempts: int
    retry_delay_seconds: int
    stuck_after_seconds: int
    request_grace_seconds: int


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def get_settings() -> Settings:
    config_path = os.environ.get("INGEST_CONFIG")
    if not config_path and Path("ingest.yaml").exists():
        config_path = "ingest.yaml"
    return Settings(
        landing_url=os.environ.get("INGEST_LANDING_URL", "./data/landing"),
        lake_url=os.environ.get("INGEST_LAKE_URL", "./data/lake"),
        warehouse_path=os.environ.get("INGEST_WAREHOUSE_PATH", "./data/warehouse.duckdb"),
        export_url=os.environ.get("INGEST_EXPORT_URL", "./data/exports"),
        config_path=config_path or None,
        sensor_interval_seconds=_int_env("INGEST_SENSOR_INTERVAL_SECONDS", 30),
        tenant=os.environ.get("INGEST_TENANT", "default"),
        # A run is a process start: batch many small files per run, but bound the batch so one
        # run's work (and its failure) stays small.
        max_files_per_run=_int_env("INGEST_MAX_FILES_PER_RUN", 5000),
        max_runs_per_tick=_int_env("INGEST_MAX_RUNS_PER_TICK", 25),
        # Objects whose LastModified is this far behind the newest one seen are still looked for,
        # so an upload that started earlier but finished later is not missed.
        sensor_lookback_seconds=_int_env("INGEST_SENSOR_LOOKBACK_SECONDS", 3600),
        # A file is read at most this many times before it is `failed` for good (transient
        # errors, runs that died while reading it); the wait doubles from the first delay.
        max_attempts=_int_env("INGEST_MAX_ATTEMPTS", 4),
        retry_delay_seconds=_int_env("INGEST_RETRY_DELAY_SECONDS", 30),
        # A file not final after this long is reported as stuck (asset check, `status`).
        stuck_after_seconds=_int_env("INGEST_STUCK_AFTER_SECONDS", 1800),
        # How long a requested run may take to appear in the Dagster instance before the
        # request counts as lost and its files are requested again.
        request_grace_seconds=_int_env("INGEST_REQUEST_GRACE_SECONDS", 120),
    )


def partitions_start_date(today: date | None = None) -> date:
    """The first landing-date partition: INGEST_PARTITIONS_START_DATE (YYYY-MM-DD), else the
    first day of the month two months before `today` (UTC)."""
    raw = os.environ.get("INGEST_PARTITIONS_START_DATE", "").strip()
    if raw:
        try:
            return date.fromisoformat(raw)
        except ValueError as exc:
            raise ValueError(
                f"INGEST_PARTITIONS_START_DATE must be a date like 2026-01-01, got {raw!r}"
            ) from exc
    today = today or datetime.now(UTC).date()
    month = today.month - 2
    year = today.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    return date(year, month, 1)
