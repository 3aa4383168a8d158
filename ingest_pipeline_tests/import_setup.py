"""Test set-ups for configured imports: an ingest.yaml with imports and their manifests in a
temporary folder, loaded as the pipeline loads it, and a run of one import on real DuckDB and a
local lake."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import yaml

from ingest_pipeline import warehouse
from ingest_pipeline.config import IngestConfig, load_config
from ingest_pipeline.imports.run import ImportRunResult, run_import
from ingest_pipeline.landing import LocalLanding

EVENTS_MANIFEST = {
    "columns": {
        "USER_ID": {"attribute": "user_id", "type": "string"},
        "EVENT_TS": {"attribute": "event_time", "type": "datetime", "format": "%Y-%m-%d %H:%M:%S"},
        "AMOUNT": {"attribute": "amount", "type": "number"},
        "IS_PAID": {"attribute": "is_paid", "type": "boolean"},
        "PAID_AT": {"attribute": "paid_at", "type": "datetime", "format": "%d/%m/%Y"},
        "PLAN": {"attribute": "plan", "type": "string"},
        "INTERNAL": "skip",
        "NOT_IN_FILE": {"attribute": "never_there", "type": "string"},
    }
}


@dataclass
class ImportSetup:
    root: Path
    config_path: Path
    warehouse_path: Path
    lake: LocalLanding

    @property
    def config(self) -> IngestConfig:
        return load_config(self.config_path)

    def run(self, name: str, **kwargs: Any) -> ImportRunResult:
        config = self.config
        return run_import(
            config,
            config.import_config(name),
            lake=self.lake,
            warehouse_path=self.warehouse_path,
            **kwargs,
        )

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with duckdb.connect(str(self.warehouse_path), read_only=True) as con:
            cursor = con.execute(sql, params or [])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def make_setup(
    root: Path, imports: list[dict[str, Any]], manifests: dict[str, dict[str, Any]], **top: Any
) -> ImportSetup:
    """ingest.yaml with `imports` (and any other top-level keys) and the manifests (file name ->
    content) beside it; an empty warehouse and lake under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in manifests.items():
        (root / name).write_text(yaml.safe_dump(content, sort_keys=False))
    config_path = root / "ingest.yaml"
    config_path.write_text(yaml.safe_dump({"imports": imports, **top}))
    warehouse_path = root / "warehouse.duckdb"
    with warehouse.connect(warehouse_path) as con:
        warehouse.ensure_schema(con)
    return ImportSetup(root, config_path, warehouse_path, LocalLanding(root / "lake"))


def csv_file(header: list[str], rows: list[list[str]]) -> bytes:
    """A CSV body (every value quoted only when it must be)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()
