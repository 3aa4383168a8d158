"""Analysts' reads during merges: a published DuckDB snapshot (A) or DuckLake (B)?

DuckDB lets one process write a file and locks every other process out of it, so an analyst's
read-only query fails with "Conflicting lock" while a merge holds the warehouse. Two designs,
measured on the same input in one run:

  (A) the DuckDB file as now, plus a read snapshot: after each committed merge the writer (still
      holding its connection) runs CHECKPOINT, copies the file to a new snapshot (to a tmp name,
      fsync, os.replace) and repoints the `warehouse.read.duckdb` symlink; readers open the
      symlink read-only. Measured on duckdb 2.0 (the project's) and on duckdb 1.5.x. The copy is
      made by a child process (`cp`), never by shutil.copyfile in the writer: DuckDB's lock is a
      POSIX fcntl lock, which the writer process loses as soon as it closes any descriptor of
      the file, after which other processes open the warehouse, read-write too (the run checks
      this on both versions: `lockcheck`).
  (B) DuckLake on duckdb 1.5.x: Parquet files in a folder, the catalog in SQLite; readers attach
      the lake READ_ONLY and see the last committed snapshot.

Both merge as the pipeline does (ingest_pipeline/merge.py): per batch `DELETE FROM events t USING
batch w WHERE <same key>` then `INSERT INTO events SELECT ... FROM batch`, one transaction, into
the events table of ingest_pipeline/warehouse.py.

    .venv/bin/python benchmarks/bench_reader_designs.py                 # full run: 9-10 min idle
    .venv/bin/python benchmarks/bench_reader_designs.py --sizes 100000 --small-commits 50  # smoke

Tests, for warehouse sizes of 100k, 1M and 5M events rows:
  1. a 10k-row merge (5k new keys, 5k replacing stored rows): A's merge and its publish
     (checkpoint + copy) on duckdb 2.0 and 1.5, B's merge; and a 20-row commit's publish (A).
  2. a reader's `SELECT count(*), count(DISTINCT contact_key) FROM events` as a whole process
     (`python -c`: start-up, open, query), with no writer and while another process merges back to
     back: A against the snapshot, B against the lake, and the plain file (refused: the lock).
  3. 500 commits of 20 rows (at --small-size): the total; for B the files in the lake, the
     reader's time after them with and without data inlining, and after DuckLake's maintenance;
     for A the publish a commit would add (sampled every --publish-every commits).
  4. the raw baseline: the same 10k-row batches INSERTed into a plain table (no DELETE).

Every figure is the median of --repeat runs (5M: --repeat-5m), ratios are of medians. The
DuckLake interpreter is a venv of its own (benchmarks/out/ducklake-venv, built when missing) with
duckdb and the DuckLake and SQLite extensions from PyPI (duckdb-extension-ducklake / -sqlite,
published for duckdb 1.5.x only); the extensions are laid out as an extension directory and
LOADed by name with autoinstall and autoload off; the check that they load with no network runs
in a network namespace of its own (`unshare -n`) when the machine allows one. Results go to
benchmarks/out/reader_designs.json; the stores live in benchmarks/out/reader_designs/ (removed
size by size).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
WORKER = HERE / "reader_designs_worker.py"
VENV = OUT / "ducklake-venv"
DL_PY = VENV / "bin" / "python"
EXT_DIR = VENV / "duckdb_extensions"
MAIN_PY = Path(sys.executable)
# The newest duckdb 1.5.x that the extension packages are published for (`pip index versions
# duckdb-extension-ducklake`: 1.5.5; duckdb itself has 1.5.6, which the packages' pin refuses).
PINS = ("duckdb==1.5.5", "duckdb-extension-ducklake==1.5.5", "duckdb-extension-sqlite==1.5.5")
BATCH_ROWS = 10_000
SMALL_ROWS = 20
INLINE_LIMIT = 100  # rows: a 20-row commit (and its deletes) go to the catalog, not to Parquet

READER = r"""
import json, sys, time
started = time.perf_counter()
import duckdb
imported = time.perf_counter()
mode, target = sys.argv[1], sys.argv[2]
try:
    if mode == "file":
        con = duckdb.connect(target, read_only=True)
        table = "events"
    else:
        con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                     "autoload_known_extensions": False,
                                     "extension_directory": sys.argv[3]})
        con.execute("LOAD sqlite_scanner")
        con.execute("LOAD ducklake")
        con.execute(f"ATTACH 'ducklake:sqlite:{target}' AS lake (READ_ONLY)")
        table = "lake.events"
    opened = time.perf_counter()
    rows, contacts = con.execute(
        f"SELECT count(*), count(DISTINCT contact_key) FROM {table}").fetchone()
    done = time.perf_counter()
    print(json.dumps({"ok": True, "rows": rows, "contacts": contacts,
                      "import_s": imported - started, "open_s": opened - imported,
                      "query_s": done - opened}))
except duckdb.Error as e:
    print(json.dumps({"ok": False, "error": str(e), "import_s": imported - started}))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def worker(py: Path, command: str, args: dict, timeout: float = 900) -> dict:
    proc = subprocess.run(
        [str(py), str(WORKER), command, json.dumps(args, default=str)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {command} failed ({py}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def ensure_ducklake_venv() -> dict:
    """The DuckLake venv (built when missing or not at PINS), its extension directory, and a
    check that the extensions load and a lake works with no network at all."""
    check = [
        str(DL_PY),
        "-c",
        "import duckdb, duckdb_extension_ducklake, duckdb_extension_sqlite; "
        f"assert duckdb.__version__ == {PINS[0].split('==')[1]!r}",
    ]
    built = False
    if not DL_PY.exists() or subprocess.run(check, capture_output=True).returncode != 0:
        log(f"building {VENV} ({', '.join(PINS)})")
        shutil.rmtree(VENV, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(DL_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
            check=True,
        )
        built = True
    laid = worker(DL_PY, "setup_ext", {"ext": EXT_DIR})
    tmp = OUT / "reader_designs" / "ext-check"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = json.dumps({"ext": str(EXT_DIR), "catalog": str(tmp / "c.sqlite"), "data": f"{tmp}/d/"})
    offline = can_unshare()
    cmd = [str(DL_PY), str(WORKER), "check_ext", args]
    proc = subprocess.run(
        (["unshare", "-n"] if offline else []) + cmd, capture_output=True, text=True, check=True
    )
    shutil.rmtree(tmp, ignore_errors=True)
    pip = subprocess.run(
        [str(DL_PY), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    versions = {
        p["name"]: p["version"] for p in json.loads(pip.stdout) if p["name"].startswith("duckdb")
    }
    return {
        "venv": str(VENV),
        "built_now": built,
        "packages": versions,
        "extension_dir": laid,
        "offline_check": {
            "network_namespace": offline,
            **json.loads(proc.stdout.strip().splitlines()[-1]),
        },
    }


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_once(py: Path, mode: str, target: Path) -> dict:
    """One reader process; its wall time and CPU time (of the children reaped meanwhile: only
    it, a merge loop running beside is reaped later)."""
    started, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run(
        [str(py), "-c", READER, mode, str(target), str(EXT_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        out = {"ok": False, "error": f"rc={proc.returncode} {proc.stderr[-500:]}"}
    out["wall_s"], out["cpu_s"] = wall, cpu
    return out


def readers(py: Path, mode: str, target: Path, n: int) -> dict:
    runs = [read_once(py, mode, target) for _ in range(n)]
    ok = [r for r in runs if r["ok"]]
    summary = {
        "runs": runs,
        "ok": len(ok),
        "failed": len(runs) - len(ok),
        "wall_s": med([r["wall_s"] for r in ok]),
        "cpu_s": med([r["cpu_s"] for r in ok]),
        "open_s": med([r["open_s"] for r in ok]),
        "query_s": med([r["query_s"] for r in ok]),
    }
    if len(ok) < len(runs):
        bad = [r for r in runs if not r["ok"]]
        summary["error"] = bad[0]["error"].splitlines()[0][:300]
        summary["refused_wall_s"] = med([r["wall_s"] for r in bad])
    return summary


class Batches:
    """Each store's sequence of batches: new ids from `n` on, replaced ids by a stride; the
    stores of one size get the same sequence (the same input)."""

    def __init__(self, n: int) -> None:
        self.n, self.batch, self.new_start, self.repl_start = n, 1, n, 0

    def take(self, rows: int) -> dict:
        spec = {
            "batch": self.batch,
            "new_start": self.new_start,
            "n_new": rows // 2,
            "repl_start": self.repl_start,
            "n_repl": rows - rows // 2,
        }
        self.batch += 1
        self.new_start += rows // 2
        self.repl_start += rows - rows // 2
        return spec


def stores(work: Path, inline: int | None = None) -> dict[str, tuple[Path, dict]]:
    lake = {
        "kind": "lake",
        "catalog": str(work / "lake" / "lake.sqlite"),
        "data": f"{work / 'lake' / 'data'}/",
        "ext": str(EXT_DIR),
    }
    if inline is not None:
        lake["inline"] = inline
    return {
        "A_duckdb2": (MAIN_PY, {"kind": "file", "path": str(work / "a2" / "warehouse.duckdb")}),
        "A_duckdb15": (DL_PY, {"kind": "file", "path": str(work / "a15" / "warehouse.duckdb")}),
        "B_ducklake": (DL_PY, lake),
    }


def build(py: Path, store: dict, n: int) -> dict:
    for key in ("path", "catalog"):
        if key in store:
            Path(store[key]).parent.mkdir(parents=True, exist_ok=True)
    return worker(py, "build", {"store": store, "n": n})


def merge_loop(py: Path, store: dict, n: int, spec: dict, work: Path) -> tuple:
    ready, stop = work / "loop.ready", work / "loop.stop"
    ready.unlink(missing_ok=True)
    stop.unlink(missing_ok=True)
    args = {"store": store, "n": n, "first": spec, "ready": ready, "stop": stop, "max_s": 240}
    proc = subprocess.Popen(
        [str(py), str(WORKER), "loop", json.dumps(args, default=str)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"merge loop did not start: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    time.sleep(0.3)  # inside its first merge

    def finish() -> dict:
        stop.write_text("")
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"merge loop failed: {err[-2000:]}")
        return json.loads(out.strip().splitlines()[-1])

    return json.loads(ready.read_text()), finish


def consistent(summary: dict, start_rows: int, step: int) -> bool:
    """Every reader saw a committed state: the rows before the loop plus whole batches."""
    return all((r["rows"] - start_rows) % step == 0 for r in summary["runs"] if r["ok"])


def run_size(n: int, repeat: int, args: argparse.Namespace) -> dict:
    work = OUT / "reader_designs" / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict = {"n": n, "repeat": repeat}
    todo = stores(work)
    seqs = {name: Batches(n) for name in todo}
    for name, (py, store) in todo.items():
        log(f"n={n:,}: build {name}")
        result.setdefault("build", {})[name] = build(py, store, n)
    # 1 + 4: merges, publishes, raw inserts.
    for name, (py, store) in todo.items():
        log(f"n={n:,}: {repeat} merges of {BATCH_ROWS:,} rows into {name}")
        big = [seqs[name].take(BATCH_ROWS) for _ in range(repeat)]
        small = [seqs[name].take(SMALL_ROWS) for _ in range(repeat)]
        raw = work / f"raw-{name}.duckdb"
        out = worker(
            py, "merge", {"store": store, "n": n, "batches": big, "small": small, "raw": raw}
        )
        result.setdefault("merge", {})[name] = out
    # 2: readers, idle and during back-to-back merges.
    a_store, lake = todo["A_duckdb2"][1], todo["B_ducklake"][1]
    link = Path(a_store["path"]).with_name("warehouse.read.duckdb")
    catalog = Path(lake["catalog"])
    log(f"n={n:,}: readers with no writer")
    idle = {
        "A_snapshot": readers(MAIN_PY, "file", link, repeat),
        "plain_file": readers(MAIN_PY, "file", Path(a_store["path"]), repeat),
        "B_lake": readers(DL_PY, "lake", catalog, repeat),
    }
    log(f"n={n:,}: readers while A merges + publishes back to back")
    busy = {}
    ready, finish = merge_loop(MAIN_PY, a_store, n, seqs["A_duckdb2"].take(BATCH_ROWS), work)
    busy["A_snapshot"] = readers(MAIN_PY, "file", link, repeat)
    busy["plain_file"] = readers(MAIN_PY, "file", Path(a_store["path"]), repeat)
    loop_a = finish()
    busy["A_snapshot"]["consistent"] = consistent(busy["A_snapshot"], ready["rows"], 5000)
    log(f"n={n:,}: readers while B merges back to back")
    ready, finish = merge_loop(DL_PY, lake, n, seqs["B_ducklake"].take(BATCH_ROWS), work)
    busy["B_lake"] = readers(DL_PY, "lake", catalog, repeat)
    loop_b = finish()
    busy["B_lake"]["consistent"] = consistent(busy["B_lake"], ready["rows"], 5000)
    result["readers"] = {"idle": idle, "busy": busy, "writer_A": loop_a, "writer_B": loop_b}
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def run_small(n: int, repeat: int, args: argparse.Namespace) -> dict:
    """Test 3 at one size: fresh stores, `commits` commits of 20 rows each."""
    work = OUT / "reader_designs" / f"small-n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    todo = {
        "A_duckdb2": (MAIN_PY, stores(work)["A_duckdb2"][1]),
        "A_duckdb15": (DL_PY, stores(work)["A_duckdb15"][1]),
        "B_no_inlining": (DL_PY, stores(work / "b0", inline=0)["B_ducklake"][1]),
        f"B_inlining_{INLINE_LIMIT}": (
            DL_PY,
            stores(work / "bi", inline=INLINE_LIMIT)["B_ducklake"][1],
        ),
    }
    result: dict = {"n": n, "commits": args.small_commits, "rows_per_commit": SMALL_ROWS}
    for name, (py, store) in todo.items():
        log(f"small n={n:,}: build {name}")
        built = build(py, store, n)
        lake = store["kind"] == "lake"
        target = (
            Path(store["catalog"])
            if lake
            else Path(store["path"]).with_name("warehouse.read.duckdb")
        )
        mode = "lake" if lake else "file"
        entry: dict = {"build": built, "reader_before": readers(py, mode, target, repeat)}
        log(f"small n={n:,}: {args.small_commits} commits of {SMALL_ROWS} rows into {name}")
        spec = Batches(n).take(SMALL_ROWS)
        entry["commits"] = worker(
            py,
            "small",
            {
                "store": store,
                "n": n,
                "first": spec,
                "commits": args.small_commits,
                "publish_every": args.publish_every,
            },
            timeout=1800,
        )
        entry["reader_after"] = readers(py, mode, target, repeat)
        if lake:
            log(f"small n={n:,}: maintenance of {name}")
            entry["maintenance"] = worker(py, "maintain", {"store": store})
            entry["reader_after_maintenance"] = readers(py, mode, target, repeat)
        result[name] = entry
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


# --- the report ---------------------------------------------------------------------------


def fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _pub(entry: dict, key: str = "publish_s", which: str = "publish") -> float | None:
    return med([p[key] for p in entry[which]])


def _with_publish(entry: dict) -> float | None:
    pairs = zip(entry["merge_s"], entry["publish"], strict=True)
    return med([m + p["publish_s"] for m, p in pairs])


def report(results: dict) -> str:
    lines: list[str] = []
    w = lines.append
    sizes = results["sizes"]
    w("## 1. One 10k-row merge (5k new keys, 5k replacing stored rows), wall time, median")
    w("")
    w(
        "| events rows | runs | A 2.0 merge | A 2.0 checkpoint | A 2.0 copy+fsync | A 2.0 merge+publish "
        "| A 1.5 merge | A 1.5 merge+publish | B DuckLake merge | B / A2.0 merge "
        "| B / A2.0 merge+publish | A2.0 / A1.5 merge+publish |"
    )
    w("|" + "---|" * 12)
    for s in sizes:
        a2, a15, b = (s["merge"][k] for k in ("A_duckdb2", "A_duckdb15", "B_ducklake"))
        a2m, bm = med(a2["merge_s"]), med(b["merge_s"])
        a2t, a15t = _with_publish(a2), _with_publish(a15)
        w(
            f"| {s['n']:,} | {s['repeat']} | {fmt_s(a2m)} | {fmt_s(_pub(a2, 'checkpoint_s'))} "
            f"| {fmt_s(_pub(a2, 'copy_s'))} | {fmt_s(a2t)} | {fmt_s(med(a15['merge_s']))} "
            f"| {fmt_s(a15t)} | {fmt_s(bm)} | {ratio(bm, a2m)} | {ratio(bm, a2t)} "
            f"| {ratio(a2t, a15t)} |"
        )
    w("")
    w(
        "Rows after test 1 (same input into each store): "
        + "; ".join(
            f"{s['n']:,}: "
            + " / ".join(str(s["merge"][k]["rows"]) for k in s["merge"])
            + (" (equal)" if len({s["merge"][k]["rows"] for k in s["merge"]}) == 1 else " (DIFFER)")
            for s in sizes
        )
    )
    w("")
    w(
        "CPU time of the same merges (all threads of the writer process), median, and the stores' size:"
    )
    w("")
    w(
        "| events rows | A 2.0 merge | A 2.0 publish | A 1.5 merge | A 1.5 publish | B merge "
        "| B / A2.0 merge | file MB 2.0 / 1.5 | lake Parquet MB |"
    )
    w("|" + "---|" * 9)
    for s in sizes:
        a2, a15, b = (s["merge"][k] for k in ("A_duckdb2", "A_duckdb15", "B_ducklake"))
        w(
            f"| {s['n']:,} | {fmt_s(med(a2['merge_cpu_s']))} "
            f"| {fmt_s(_pub(a2, 'publish_cpu_s'))} | {fmt_s(med(a15['merge_cpu_s']))} "
            f"| {fmt_s(_pub(a15, 'publish_cpu_s'))} | {fmt_s(med(b['merge_cpu_s']))} "
            f"| {ratio(med(b['merge_cpu_s']), med(a2['merge_cpu_s']))} "
            f"| {a2['publish'][-1]['file_bytes'] / 2**20:.0f} / "
            f"{a15['publish'][-1]['file_bytes'] / 2**20:.0f} "
            f"| {b['files']['parquet_bytes_on_disk'] / 2**20:.0f} |"
        )
    w("")
    w("A 20-row commit and the publish (checkpoint + copy + relink) it costs design A, median:")
    w("")
    w("| events rows | A 2.0 commit | A 2.0 publish | A 1.5 commit | A 1.5 publish | B commit |")
    w("|---|---|---|---|---|---|")
    for s in sizes:
        a2, a15, b = (s["merge"][k] for k in ("A_duckdb2", "A_duckdb15", "B_ducklake"))
        w(
            f"| {s['n']:,} | {fmt_s(med(a2['small_merge_s']))} "
            f"| {fmt_s(_pub(a2, which='small_publish'))} | {fmt_s(med(a15['small_merge_s']))} "
            f"| {fmt_s(_pub(a15, which='small_publish'))} | {fmt_s(med(b['small_merge_s']))} |"
        )
    w("")
    w("## 4. Raw baseline: the same 10k-row batch INSERTed into a plain table (no DELETE), median")
    w("")
    w(
        "| events rows | raw 2.0 | raw 1.5 | raw DuckLake | A2.0 merge / raw | A1.5 merge / raw "
        "| B merge / raw DuckLake | B merge / raw 2.0 |"
    )
    w("|" + "---|" * 8)
    for s in sizes:
        a2, a15, b = (s["merge"][k] for k in ("A_duckdb2", "A_duckdb15", "B_ducklake"))
        r2, r15, rb = (med(x["raw_insert_s"]) for x in (a2, a15, b))
        w(
            f"| {s['n']:,} | {fmt_s(r2)} | {fmt_s(r15)} | {fmt_s(rb)} "
            f"| {ratio(med(a2['merge_s']), r2)} | {ratio(med(a15['merge_s']), r15)} "
            f"| {ratio(med(b['merge_s']), rb)} | {ratio(med(b['merge_s']), r2)} |"
        )
    w("")
    w(
        "## 2. A reader process: `python -c` that imports duckdb, opens and runs "
        "`SELECT count(*), count(DISTINCT contact_key) FROM events`, median wall (CPU)"
    )
    w("")
    w(
        "| events rows | writer | A snapshot | of it: query | plain file | B lake "
        "| of it: open (ext. load + attach) | of it: query | B / A wall | consistent A / B "
        "| merges meanwhile A / B |"
    )
    w("|" + "---|" * 11)
    for s in sizes:
        r = s["readers"]
        for phase in ("idle", "busy"):
            a, p, b = (r[phase][k] for k in ("A_snapshot", "plain_file", "B_lake"))
            if p["failed"]:
                plain = (
                    f"**refused** {p['failed']}/{p['failed'] + p['ok']} "
                    f"(after {fmt_s(p.get('refused_wall_s'))})"
                )
            else:
                plain = f"{fmt_s(p['wall_s'])} ({fmt_s(p['cpu_s'])})"
            flag = "".join(f" [{v['failed']} failed]" for v in (a, b) if v["failed"])
            busy = phase == "busy"
            w(
                f"| {s['n']:,} | {'merging' if busy else 'none'} "
                f"| {fmt_s(a['wall_s'])} ({fmt_s(a['cpu_s'])}) | {fmt_s(a['query_s'])} | {plain} "
                f"| {fmt_s(b['wall_s'])} ({fmt_s(b['cpu_s'])}) | {fmt_s(b['open_s'])} "
                f"| {fmt_s(b['query_s'])} | {ratio(b['wall_s'], a['wall_s'])}{flag} "
                f"| {str(a.get('consistent')) + ' / ' + str(b.get('consistent')) if busy else '-'} "
                f"| {str(r['writer_A']['merges']) + ' / ' + str(r['writer_B']['merges']) if busy else '-'} |"
            )
    for e in sorted(
        {x["readers"]["busy"]["plain_file"].get("error") for x in sizes} - {None}, key=str
    ):
        w("")
        w(f"The plain file while the writer holds it: `{e}`")
    w("")
    w(
        "The writer meanwhile (median per merge): "
        + "; ".join(
            f"{s['n']:,}: A merge {fmt_s(med(s['readers']['writer_A']['merge_s']))} + publish "
            f"{fmt_s(med(s['readers']['writer_A']['publish_s']))}, B merge "
            f"{fmt_s(med(s['readers']['writer_B']['merge_s']))}"
            for s in sizes
        )
    )
    w("")
    w(
        "The writer's lock (another process opening the warehouse read-only / read-write while "
        "the writer holds its connection):"
    )
    for name, c in results.get("lockcheck", {}).items():
        w(
            f"- {name}: before any copy {c['before_copy']['ro'][:8]} / {c['before_copy']['rw'][:8]}; "
            f"after `cp` in a child {c['after_cp_in_child']['ro'][:8]} / "
            f"{c['after_cp_in_child']['rw'][:8]}; after shutil.copyfile in the writer "
            f"{c['after_shutil_copyfile']['ro'][:8]} / {c['after_shutil_copyfile']['rw'][:8]}"
        )
    small = results.get("small")
    if small:
        w("")
        w(
            f"## 3. {small['commits']} commits of {small['rows_per_commit']} rows "
            f"(10 new, 10 replacing) into {small['n']:,} rows, fresh stores"
        )
        w("")
        w(
            "| store | all commits wall (CPU) | per commit | publish per commit (sampled) "
            "| total if published after every commit | data / delete files (current) "
            "| Parquet files on disk | inlined rows: live inserts (all) / deletes | reader before | reader after "
            "| maintenance | reader after maintenance | files after maintenance |"
        )
        w("|" + "---|" * 13)
        for name, e in small.items():
            if not isinstance(e, dict) or "commits" not in e:
                continue
            c = e["commits"]
            pub = med([p["publish_s"] for p in c.get("publish_samples", [])])
            total = c["total_merge_s"] + pub * c["commits"] if pub is not None else None
            fa, mt, am = (
                c.get("files_after"),
                e.get("maintenance"),
                e.get("reader_after_maintenance"),
            )
            inl = c.get("inlined_rows") or {}
            w(
                f"| {name} | {fmt_s(c['total_merge_s'])} ({fmt_s(c['total_merge_cpu_s'])}) "
                f"| {fmt_s(c['commit_median_s'])} | {fmt_s(pub)} | {fmt_s(total)} "
                f"| {str(fa['data_files']) + ' / ' + str(fa['delete_files']) if fa else '-'} "
                f"| {fa['parquet_files_on_disk'] if fa else '-'} "
                f"| {str(inl.get('live_rows')) + ' (' + str(inl.get('all_rows')) + ') / ' + str(inl.get('delete_rows')) if inl else '-'} "
                f"| {fmt_s(e['reader_before']['wall_s'])} (q {fmt_s(e['reader_before']['query_s'])}) "
                f"| {fmt_s(e['reader_after']['wall_s'])} (q {fmt_s(e['reader_after']['query_s'])}) "
                f"| {fmt_s(sum(mt['steps_s'].values())) if mt else '-'} "
                f"| {fmt_s(am['wall_s']) + ' (q ' + fmt_s(am['query_s']) + ')' if am else '-'} "
                f"| {str(mt['files_after']['data_files']) + ' / ' + str(mt['files_after']['delete_files']) + ', ' + str(mt['files_after']['parquet_files_on_disk']) + ' on disk' if mt else '-'} |"
            )
        for name, e in small.items():
            if isinstance(e, dict) and e.get("maintenance", {}).get("errors"):
                w("")
                w(f"Maintenance errors ({name}): {e['maintenance']['errors']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--repeat-5m", type=int, default=5, help="repeats at sizes >= 5M")
    parser.add_argument("--small-size", type=int, default=100_000)
    parser.add_argument("--small-commits", type=int, default=500)
    parser.add_argument("--publish-every", type=int, default=50)
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--out", type=Path, default=OUT / "reader_designs.json")
    args = parser.parse_args()
    started = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["ducklake_env"] = ensure_ducklake_venv()
    import duckdb

    results["main_duckdb"] = duckdb.__version__
    lock_dir = OUT / "reader_designs" / "lockcheck"
    lock_dir.mkdir(parents=True, exist_ok=True)
    results["lockcheck"] = {
        name: worker(py, "lockcheck", {"path": lock_dir / f"{name}.duckdb"})
        for name, py in (("duckdb2", MAIN_PY), ("duckdb15", DL_PY))
    }
    shutil.rmtree(lock_dir, ignore_errors=True)
    results["sizes"] = []
    for n in (int(x) for x in args.sizes.split(",")):
        repeat = args.repeat_5m if n >= 5_000_000 else args.repeat
        results["sizes"].append(run_size(n, repeat, args))
        args.out.write_text(json.dumps(results, indent=2, default=str))
    if not args.skip_small:
        results["small"] = run_small(args.small_size, args.repeat, args)
    results["total_s"] = time.perf_counter() - started
    text = report(results)
    results["report"] = text
    args.out.write_text(json.dumps(results, indent=2, default=str))
    env = results["ducklake_env"]
    print(text)
    print()
    print(
        f"DuckLake venv: {env['packages']}; extensions loaded offline "
        f"(network namespace: {env['offline_check']['network_namespace']}): "
        + ", ".join(
            f"{x['name']} {x['version']} from {x['path']}" for x in env["offline_check"]["loaded"]
        )
    )
    print(f"total {results['total_s']:.0f} s; results: {args.out}")


if __name__ == "__main__":
    main()
