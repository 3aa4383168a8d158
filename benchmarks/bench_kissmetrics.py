"""Benchmark: one large Kissmetrics `.jsonl.gz` file, raw DuckDB vs this pipeline, same run.

    .venv/bin/python benchmarks/bench_kissmetrics.py                  # 1,000,000 lines, 3 repeats
    .venv/bin/python benchmarks/bench_kissmetrics.py --rows 200000 --repeat 1
    .venv/bin/python benchmarks/bench_kissmetrics.py --sides pipeline --repeat 1   # stages only

What it measures, per side, each run in its own child process (this script with `--child`) so
that a side's peak RSS is its own (`os.wait4` of that child):

  raw       DuckDB alone: COPY (SELECT * FROM read_json(<file>)) TO 'x.parquet'
  pipeline  this project: pipeline.ingest_to_bronze (landing copy, parse, validate, quarantine,
            bronze Parquet, ledger) then pipeline.merge_pending (one merge transaction: the
            `events`, `aliases` and `contacts` targets and the identity graph) for
            FEEDS["kissmetrics"], into a fresh DuckDB warehouse file, LocalLanding landing + lake.

Figures: wall seconds and CPU seconds (user + system, every thread) of the measured step, medians
over `--repeat` alternating rounds; the ratio median(pipeline) / median(raw) (wall, and CPU too);
peak RSS MiB. Targets: ratio <= 2.0 and pipeline peak RSS <= 1024 MiB (printed met / unmet). The
pipeline side also prints the exclusive time of each stage (bench_track_1m's instrumentation, with
the merge split per target and the identity graph on its own), measured by wrapping core functions
from this script; the core modules are not changed.

The input is generated once (seeded, deterministic) and cached in `--out` (benchmarks/out/,
gitignored): 80% events {_p, _n, _t, a few properties}, 15% person property sets {_p, _t, 1-3
properties}, 5% aliases {_p, _p2, _t}; ~100,000 people, each with an email identity and 1-3
anonymous ids (events name either); ~1% of events repeated (same _p, _n, _t) and repeated alias
keys, so the merge dedupes; ~0.1% bad lines (placeholder `_p`, millisecond `_t`, missing `_p` or
`_t`, invalid JSON, a line saying nothing). The generator's bookkeeping (bad lines, distinct event
and alias keys, identities, people) is checked against the pipeline's ledger and tables; the
script exits 1 when they disagree.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_track_1m as track  # noqa: E402
from bench_track_1m import (  # noqa: E402
    MIB,
    S_GLUE,
    Stages,
    _proc_status_mib,
    _vm_kib,
    child_raw,
    instrument,
)

DEFAULT_OUT = HERE / "out"
GENERATOR_VERSION = 1
TARGET_RATIO = 2.0
TARGET_RSS_MIB = 1024
TENANT = "bench"

# --------------------------------------------------------------------------------------------
# Input generator
# --------------------------------------------------------------------------------------------

PEOPLE = 100_000
EVENT_NAMES = ["visited site", "viewed page", "clicked", "signed up", "subscribed", "purchased"]
EVENT_WEIGHTS = [35, 30, 15, 8, 7, 5]
URLS = ["www.example.com/", "www.example.com/pricing", "www.example.com/docs", "app.example.com/"]
PLANS = ["free", "starter", "pro", "enterprise"]
COUNTRIES = ["US", "DE", "FR", "GB", "BR", "IN", "JP"]
PERSON_PROPERTIES = ("Plan", "Age", "Gender", "Email Address", "Company", "Country")
BASE_SECONDS = 1_700_000_000
SPAN_SECONDS = 90 * 86_400
EVENT_FRACTION = 0.80
PROPERTY_FRACTION = 0.15  # the rest (5%) are aliases
DUPLICATE_FRACTION = 0.01  # of events: an earlier event (same _p, _n, _t) sent again
BAD_FRACTION = 0.001
BAD_KINDS = (
    "placeholder_p",
    "milliseconds_t",
    "missing_p",
    "missing_t",
    "invalid_json",
    "says_nothing",
)
PLACEHOLDERS = ("null", "undefined", "anonymous", "")


def data_paths(out_dir: Path, rows: int, seed: int) -> tuple[Path, Path]:
    stem = f"kissmetrics_{rows}_s{seed}_v{GENERATOR_VERSION}"
    return out_dir / f"{stem}.jsonl.gz", out_dir / f"{stem}.meta.json"


def _email(person: int) -> str:
    return f"person{person:06d}@mail.example.com"


def _anon(person: int, k: int) -> str:
    # Kissmetrics' anonymous ids look random; deterministic per (person, k) here.
    return f"{(person * 2_654_435_761 + k * 40_503) % 2**32:08x}-{person:05x}{k}"


def _anon_count(person: int) -> int:
    return 1 + person % 3


def _event_properties(rng: random.Random, name: str) -> dict[str, Any]:
    props: dict[str, Any] = {"url": rng.choice(URLS)}
    if rng.random() < 0.5:
        props["plan"] = rng.choice(PLANS)
    if name == "purchased":
        props["amount"] = round(rng.random() * 300, 2)
    if rng.random() < 0.3:
        props["campaign"] = f"cmp-{rng.randrange(40)}"
    return props


def _person_properties(rng: random.Random, person: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in rng.sample(PERSON_PROPERTIES, rng.randrange(1, 4)):
        if name == "Plan":
            props[name] = rng.choice(PLANS)
        elif name == "Age":
            props[name] = rng.randrange(18, 80)
        elif name == "Gender":
            props[name] = rng.choice(["Male", "Female", "Other"])
        elif name == "Email Address":
            props[name] = _email(person)
        elif name == "Company":
            props[name] = f"Company {person % 5000}"
        else:
            props[name] = rng.choice(COUNTRIES)
    return props


class _Components:
    """Union-find over identity strings: the generator's own count of people."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, x: str) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: str) -> str:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.add(a)
        self.add(b)
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def count(self) -> int:
        return sum(1 for x in self.parent if self.find(x) == x)


def generate(path: Path, meta_path: Path, rows: int, seed: int) -> dict[str, Any]:
    """Write `rows` Kissmetrics lines (gzip) and return the generator's bookkeeping."""
    rng = random.Random(seed)
    event_keys: set[tuple[str, int, int]] = set()
    alias_keys: set[str] = set()
    property_people: set[str] = set()
    people = _Components()  # every identity a valid line names, joined by the valid aliases
    recent: list[tuple[str, int, int]] = []  # valid events (_p, name index, _t) to repeat
    counts = dict.fromkeys(
        ("events", "property_sets", "aliases", "events_repeated", "bad", "valid"), 0
    )
    bad_by_kind = dict.fromkeys(BAD_KINDS, 0)
    tmp = path.with_name(f".{path.name}.tmp")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    started = time.perf_counter()
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6, newline="\n") as out:
        buffer: list[str] = []
        for _ in range(rows):
            person = rng.randrange(PEOPLE)
            ts = BASE_SECONDS + rng.randrange(SPAN_SECONDS)
            r = rng.random()
            kind = "event" if r < EVENT_FRACTION else "alias"
            if kind == "alias" and r < EVENT_FRACTION + PROPERTY_FRACTION:
                kind = "property"
            event: tuple[str, int, int] | None = None
            if kind == "event":
                if rng.random() < DUPLICATE_FRACTION and recent:
                    event = recent[rng.randrange(len(recent))]
                    counts["events_repeated"] += 1
                else:
                    p = (
                        _email(person)
                        if rng.random() < 0.6
                        else _anon(person, rng.randrange(_anon_count(person)))
                    )
                    event = (p, rng.choices(range(len(EVENT_NAMES)), EVENT_WEIGHTS)[0], ts)
                p, name, ts = event
                record: dict[str, Any] = {
                    "_n": EVENT_NAMES[name],
                    "_p": p,
                    "_t": ts,
                    **_event_properties(rng, EVENT_NAMES[name]),
                }
            elif kind == "property":
                p = (
                    _email(person)
                    if rng.random() < 0.8
                    else _anon(person, rng.randrange(_anon_count(person)))
                )
                record = {"_p": p, "_t": ts, **_person_properties(rng, person)}
            else:
                record = {
                    "_p": _email(person),
                    "_p2": _anon(person, rng.randrange(_anon_count(person))),
                    "_t": ts,
                }
            line: str | None = None
            if rng.random() < BAD_FRACTION:
                bad = BAD_KINDS[rng.randrange(len(BAD_KINDS))]
                bad_by_kind[bad] += 1
                counts["bad"] += 1
                if bad == "placeholder_p":
                    record["_p"] = rng.choice(PLACEHOLDERS)
                elif bad == "milliseconds_t":
                    record["_t"] = record["_t"] * 1000 + rng.randrange(1000)
                elif bad == "missing_p":
                    del record["_p"]
                elif bad == "missing_t":
                    del record["_t"]
                elif bad == "invalid_json":
                    line = dumps(record)[:-3]  # truncated: unterminated object
                else:
                    record = {"_p": record["_p"], "_t": record["_t"]}
            else:
                counts["valid"] += 1
                counts[{"event": "events", "property": "property_sets"}.get(kind, "aliases")] += 1
                people.add(record["_p"])
                if event is not None:
                    event_keys.add(event)
                    if len(recent) < 20_000:
                        recent.append(event)
                    else:
                        recent[rng.randrange(len(recent))] = event
                elif kind == "property":
                    property_people.add(record["_p"])
                else:
                    alias_keys.add(record["_p2"])
                    people.union(record["_p"], record["_p2"])
            buffer.append(line if line is not None else dumps(record))
            if len(buffer) >= 10_000:
                out.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            out.write("\n".join(buffer) + "\n")
    os.replace(tmp, path)
    duplicate = (counts["events"] - len(event_keys)) + (counts["aliases"] - len(alias_keys))
    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "rows": rows,
        **counts,
        "bad_by_kind": bad_by_kind,
        "expected_rejected": counts["bad"],
        "expected_duplicate": duplicate,
        "expected_loaded": counts["valid"] - duplicate,
        "expected_events": len(event_keys),
        "expected_aliases": len(alias_keys),
        "expected_contacts": len(property_people),
        "expected_identities": len(people.parent),
        "expected_people": people.count(),
        "file_bytes": path.stat().st_size,
        "generate_seconds": round(time.perf_counter() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def ensure_data(out_dir: Path, rows: int, seed: int) -> tuple[Path, dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path, meta_path = data_paths(out_dir, rows, seed)
    if path.exists() and meta_path.exists():
        print(f"input: {path} (cached)")
        return path, json.loads(meta_path.read_text())
    print(f"input: generating {rows:,} lines into {path} ...", flush=True)
    meta = generate(path, meta_path, rows, seed)
    print(f"input: generated in {meta['generate_seconds']} s")
    return path, meta


# --------------------------------------------------------------------------------------------
# Child processes: one measured step each
# --------------------------------------------------------------------------------------------


# Extra stage labels: the merge split by what it is doing (SQL inside these is theirs).
S_IDENTITY = "13 merge: identity graph (update_identities)"
_context: list[str] = []
_base_label = track._warehouse_label


def _label(sql: str) -> str:
    return _context[-1] if _context else _base_label(sql)


def _in_context(stages: Stages, label: Callable[..., str], fn: Callable[..., Any]) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        name = label(*args, **kwargs)
        _context.append(name)
        try:
            with stages.time(name):
                return fn(*args, **kwargs)
        finally:
            _context.pop()

    return wrapped


def instrument_merge(stages: Stages) -> None:
    """Time the merge per target and the identity graph on its own (bench_track_1m labels the
    rest): SQL run inside these functions is counted in their stage."""
    from ingest_pipeline import merge

    track._warehouse_label = _label  # read by bench_track_1m.instrument's connection wrapper
    merge._merge_rows = _in_context(
        stages, lambda con, target, batch: f"11 merge rows: {target.table}", merge._merge_rows
    )
    merge._merge_attributes = _in_context(
        stages,
        lambda con, target, batch: f"12 merge attributes: {target.table}",
        merge._merge_attributes,
    )
    merge.update_identities = _in_context(
        stages, lambda *a, **k: S_IDENTITY, merge.update_identities
    )


def child_pipeline(data: Path, workdir: Path) -> dict[str, Any]:
    import duckdb

    from ingest_pipeline import pipeline
    from ingest_pipeline.feeds import FEEDS
    from ingest_pipeline.landing import LocalLanding

    feed = FEEDS["kissmetrics"]
    landing_dir = workdir / "landing"
    prefix = feed.landing_prefix.rstrip("/")
    (landing_dir / prefix).mkdir(parents=True)
    target = landing_dir / prefix / data.name
    try:
        os.link(data, target)
    except OSError:
        shutil.copyfile(data, target)
    landing, lake = LocalLanding(landing_dir), LocalLanding(workdir / "lake")
    warehouse_path = workdir / "warehouse.duckdb"
    objects = list(landing.list(feed.landing_prefix))
    assert len(objects) == 1, objects

    stages = Stages()
    instrument(stages, landing, lake)
    instrument_merge(stages)
    rss_before = _proc_status_mib("VmRSS")
    cpu_started, started = time.process_time(), time.perf_counter()
    with stages.time(S_GLUE):
        bronze_out = pipeline.ingest_to_bronze(
            objects,
            feed,
            landing=landing,
            lake=lake,
            warehouse_path=warehouse_path,
            tenant_id=TENANT,
            run_id="bench",
        )
        after_bronze = time.perf_counter()
        merge_out = pipeline.merge_pending(feed, lake=lake, warehouse_path=warehouse_path)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started

    report = bronze_out.reports[0]
    con = duckdb.connect(str(warehouse_path), read_only=True)
    try:

        def one(sql: str) -> Any:
            return con.execute(sql).fetchall()[0][0]

        ledger_row = con.execute(
            "SELECT status, rows_read, rows_loaded, rows_duplicate, rows_rejected, error "
            "FROM ingested_files"
        ).fetchall()
        tables = {
            "events": one("SELECT count(*) FROM events"),
            "aliases": one("SELECT count(*) FROM aliases"),
            "aliases_refused": one("SELECT count(*) FROM aliases WHERE refused_reason IS NOT NULL"),
            "contacts": one("SELECT count(*) FROM contacts"),
            "attribute_values": one("SELECT count(*) FROM attribute_values"),
            "identities": one("SELECT count(*) FROM identities"),
            "people": one("SELECT count(DISTINCT (tenant_id, person_id)) FROM identities"),
            "largest_cluster": one(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM identities GROUP BY person_id)"
            ),
            "rejected_rows": one("SELECT count(*) FROM rejected_rows"),
        }
        reasons = con.execute(
            r"SELECT regexp_replace(regexp_replace(reason, '(got |\()''[^'']*''', '\1...', 'g'), "
            r"' at column \d+: .*', ' at column N: ...') AS reason, "
            "count(*) FROM rejected_rows GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    finally:
        con.close()
    (status, read, loaded, duplicate, rejected, error) = ledger_row[0]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "seconds_to_bronze": after_bronze - started,
        "seconds_merge": seconds - (after_bronze - started),
        "rss_before_mib": rss_before,
        "stages": stages.seconds,
        "stage_peak_rss_mib": {k: v / 1024 for k, v in stages.peak_kib.items()},
        "self_peak_rss_mib": max(stages.overall_peak_kib, _vm_kib("VmHWM")) / 1024,
        "report": {
            "status": report.status,
            "rows_read": report.rows_read,
            "rows_valid": report.rows_valid,
            "rows_duplicate": report.rows_duplicate,
            "rows_rejected": report.rows_rejected,
            "error": report.error,
        },
        "merge": {"rows_loaded": merge_out.rows_loaded, "rows_duplicate": merge_out.rows_duplicate},
        "ledger": {
            "files": len(ledger_row),
            "status": status,
            "rows_read": read,
            "rows_loaded": loaded,
            "rows_duplicate": duplicate,
            "rows_rejected": rejected,
            "error": error,
        },
        "tables": tables,
        "reject_reasons": [[r, n] for r, n in reasons],
        "warehouse_bytes": warehouse_path.stat().st_size,
    }


def run_child(side: str, data: Path, out_dir: Path, keep: bool) -> dict[str, Any]:
    """Run one measured step in a fresh child process; add its peak RSS and process CPU."""
    workdir = Path(tempfile.mkdtemp(prefix=f"km-{side}-", dir=out_dir))
    result_path = workdir / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--data", str(data)]
    cmd += ["--workdir", str(workdir), "--result", str(result_path)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    process_seconds = time.perf_counter() - started
    try:
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{side} child failed with exit code {status}")
        result = json.loads(result_path.read_text())
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["side"] = side
    result["process_seconds"] = process_seconds
    result["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mib"] = max(usage.ru_maxrss / 1024, result.get("self_peak_rss_mib", 0.0))
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def check_pipeline(result: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Problems with the pipeline's counts (empty when correct)."""
    led, tables = result["ledger"], result["tables"]
    expect = {
        "ledger files": (led["files"], 1),
        "ledger status": (led["status"], "ingested"),
        "rows_read": (led["rows_read"], meta["rows"]),
        "rows_loaded": (led["rows_loaded"], meta["expected_loaded"]),
        "rows_duplicate": (led["rows_duplicate"], meta["expected_duplicate"]),
        "rows_rejected": (led["rows_rejected"], meta["expected_rejected"]),
        "rejected_rows in quarantine": (tables["rejected_rows"], meta["expected_rejected"]),
        "events": (tables["events"], meta["expected_events"]),
        "aliases": (tables["aliases"], meta["expected_aliases"]),
        "contacts": (tables["contacts"], meta["expected_contacts"]),
        "identities": (tables["identities"], meta["expected_identities"]),
        "people (distinct person_id)": (tables["people"], meta["expected_people"]),
        "aliases refused": (tables["aliases_refused"], 0),
    }
    problems = [f"{n}: got {g}, expected {w}" for n, (g, w) in expect.items() if g != w]
    if led["rows_read"] != led["rows_loaded"] + led["rows_duplicate"] + led["rows_rejected"]:
        problems.append(
            f"rows_read {led['rows_read']} != loaded {led['rows_loaded']} + duplicate "
            f"{led['rows_duplicate']} + rejected {led['rows_rejected']}"
        )
    if not tables["aliases"] or not tables["identities"]:
        problems.append("aliases or identities is empty")
    return problems


def summarize(runs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    by_side: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_side.setdefault(r["side"], []).append(r)
    summary: dict[str, Any] = {"sides": {}}
    for side, rs in by_side.items():
        summary["sides"][side] = {
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs),
            "median_process_seconds": statistics.median(r["process_seconds"] for r in rs),
            "median_process_cpu_seconds": statistics.median(r["process_cpu_seconds"] for r in rs),
            "max_peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
            "seconds": [r["seconds"] for r in rs],
            "cpu_seconds": [r["cpu_seconds"] for r in rs],
            "peak_rss_mib": [r["peak_rss_mib"] for r in rs],
        }
    sides = summary["sides"]
    if "raw" in sides and "pipeline" in sides:
        raw, pipe = sides["raw"], sides["pipeline"]
        summary["ratio"] = pipe["median_seconds"] / raw["median_seconds"]
        summary["cpu_ratio"] = pipe["median_cpu_seconds"] / raw["median_cpu_seconds"]
        summary["process_cpu_ratio"] = (
            pipe["median_process_cpu_seconds"] / raw["median_process_cpu_seconds"]
        )
    if "pipeline" in by_side:
        rs = by_side["pipeline"]
        labels = sorted({k for r in rs for k in r["stages"]})
        summary["stages"] = {
            k: statistics.median(r["stages"].get(k, 0.0) for r in rs) for k in labels
        }
        summary["stage_peak_rss_mib"] = {
            k: max(r.get("stage_peak_rss_mib", {}).get(k, 0.0) for r in rs) for k in labels
        }
        summary["problems"] = sorted({p for r in rs for p in check_pipeline(r, meta)})
    return summary


def _met(ok: bool) -> str:
    return "met" if ok else "UNMET"


def print_report(runs: list[dict[str, Any]], summary: dict[str, Any], meta: dict[str, Any]) -> None:
    print()
    print(f"each run ({meta['rows']:,} lines, {meta['file_bytes'] / MIB:.1f} MiB gzip):")
    print(
        f"  {'#':>2}  {'side':<9} {'wall s':>8} {'CPU s':>8} {'process s':>10} "
        f"{'process CPU s':>14} {'peak RSS MiB':>13}"
    )
    for i, r in enumerate(runs):
        print(
            f"  {i + 1:>2}  {r['side']:<9} {r['seconds']:>8.2f} {r['cpu_seconds']:>8.2f} "
            f"{r['process_seconds']:>10.2f} {r['process_cpu_seconds']:>14.2f} "
            f"{r['peak_rss_mib']:>13.0f}"
        )
    print()
    print(
        f"  {'side':<9} {'median wall s':>14} {'median CPU s':>13} {'median process CPU s':>21} "
        f"{'peak RSS MiB (max)':>19}"
    )
    for side, s in summary["sides"].items():
        print(
            f"  {side:<9} {s['median_seconds']:>14.2f} {s['median_cpu_seconds']:>13.2f} "
            f"{s['median_process_cpu_seconds']:>21.2f} {s['max_peak_rss_mib']:>19.0f}"
        )
    if "ratio" in summary:
        print(
            f"\n  ratio pipeline/raw (median wall): {summary['ratio']:.2f}  "
            f"(target <= {TARGET_RATIO}: {_met(summary['ratio'] <= TARGET_RATIO)})"
        )
        print(
            f"  ratio pipeline/raw (median CPU of the step): {summary['cpu_ratio']:.2f}; "
            f"whole child process CPU: {summary['process_cpu_ratio']:.2f}"
        )
    if "pipeline" in summary["sides"]:
        rss = summary["sides"]["pipeline"]["max_peak_rss_mib"]
        print(
            f"  pipeline peak RSS: {rss:.0f} MiB  "
            f"(target <= {TARGET_RSS_MIB} MiB: {_met(rss <= TARGET_RSS_MIB)})"
        )
    if "stages" in summary:
        total = summary["sides"]["pipeline"]["median_seconds"]
        print(
            "\n  pipeline stages (median exclusive seconds, share, max peak RSS MiB in the stage):"
        )
        for label, secs in sorted(summary["stages"].items()):
            peak = summary["stage_peak_rss_mib"].get(label, 0.0)
            print(f"    {label:<74} {secs:>7.2f}  {100 * secs / total:>5.1f}%  {peak:>6.0f}")
        print(f"    {'sum':<74} {sum(summary['stages'].values()):>7.2f}")
        last = [r for r in runs if r["side"] == "pipeline"][-1]
        print(f"\n  pipeline ledger: {json.dumps(last['ledger'])}")
        print(f"  pipeline tables: {json.dumps(last['tables'])}")
        print(
            f"  expected: read {meta['rows']}, loaded {meta['expected_loaded']}, duplicate "
            f"{meta['expected_duplicate']}, rejected {meta['expected_rejected']} "
            f"({json.dumps(meta['bad_by_kind'])}); events {meta['expected_events']}, aliases "
            f"{meta['expected_aliases']}, contacts {meta['expected_contacts']}, identities "
            f"{meta['expected_identities']}, people {meta['expected_people']}"
        )
        print(f"  reject reasons: {last['reject_reasons']}")
        if summary["problems"]:
            print("  CORRECTNESS PROBLEMS:")
            for p in summary["problems"]:
                print(f"    - {p}")
        else:
            print(
                "  correctness: OK (read = loaded + duplicate + rejected; rejected = the "
                "generator's bad lines; table counts = the generator's)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--seed", type=int, default=20240901)
    parser.add_argument("--sides", choices=["both", "raw", "pipeline"], default="both")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="input cache + results")
    parser.add_argument("--keep", action="store_true", help="keep each run's work folder")
    parser.add_argument("--child", choices=["raw", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        step = child_raw if args.child == "raw" else child_pipeline
        result = step(args.data, args.workdir)
        args.result.write_text(json.dumps(result))
        return 0

    out_dir = args.out.resolve()
    data, meta = ensure_data(out_dir, args.rows, args.seed)
    sides = ["raw", "pipeline"] if args.sides == "both" else [args.sides]
    runs = []
    for i in range(args.repeat):
        order = sides if i % 2 == 0 else sides[::-1]
        for side in order:
            print(f"run {i + 1}/{args.repeat}: {side} ...", end=" ", flush=True)
            result = run_child(side, data, out_dir, args.keep)
            print(
                f"{result['seconds']:.2f} s wall, {result['cpu_seconds']:.2f} s CPU, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
            runs.append(result)
    summary = summarize(runs, meta)
    print_report(runs, summary, meta)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_path = out_dir / f"kissmetrics_results_{args.rows}_{stamp}.json"
    results_path.write_text(
        json.dumps(
            {
                "argv": sys.argv,
                "cpus": os.cpu_count(),
                "meta": meta,
                "runs": runs,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nresults: {results_path}")
    return 1 if summary.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
