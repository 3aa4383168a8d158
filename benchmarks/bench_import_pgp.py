"""Benchmark: a configured import of one 1,000,000-row PGP-encrypted events CSV
(`.csv.gz.pgp`), against raw DuckDB `read_csv` -> Parquet of the decrypted file, in the same run.

    .venv/bin/python benchmarks/bench_import_pgp.py               # 1,000,000 rows, 3 repeats
    .venv/bin/python benchmarks/bench_import_pgp.py --rows 200000 --repeat 1

Every side is a whole process (start-up counts for users), its time the wall clock and its peak
RSS from `os.wait4` of that process:

  decrypt     gpg alone: `gpg --decrypt` of the .pgp file to a .csv.gz (what decryption costs)
  raw         DuckDB alone: COPY (SELECT * FROM read_csv(<decrypted .csv.gz>)) TO 'x.parquet'
  import      `ingest-pipeline imports run bench` of the decrypted .csv.gz (no PGP): listing,
              download, parse, manifest mapping and typing, validation, quarantine, dedupe,
              bronze Parquet, ledger, merge into a fresh DuckDB warehouse
  import+pgp  the same of the .csv.gz.pgp, decrypted by the import (python-gnupg, private keyring)

The sides alternate `--repeat` times; figures are medians. Ratios: import / raw (decryption
excluded), and import+pgp / (raw + decrypt). Inputs are generated once (seeded) under
benchmarks/out/ (gitignored); the import's counts are checked against the generator's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "out"
MIB = 1024 * 1024
TARGET_RATIO = 2.0
TARGET_RSS_MIB = 1024
EVENT = "ORDER_PLACED"
PASSPHRASE = "bench passphrase"
BAD_EVERY = 1000  # one row in 1,000 has an amount that is not a number

MANIFEST = {
    "columns": {
        "USER_ID": {"attribute": "user_id", "type": "string"},
        "EVENT_TS": {"attribute": "event_time", "type": "datetime", "format": "%Y-%m-%d %H:%M:%S"},
        "AMOUNT": {"attribute": "amount", "type": "number"},
        "IS_PAID": {"attribute": "is_paid", "type": "boolean"},
        "PAID_AT": {"attribute": "paid_at", "type": "datetime", "format": "%d/%m/%Y"},
        "PLAN": {"attribute": "plan", "type": "string"},
        "INTERNAL": "skip",
    }
}


def _run(
    cmd: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None
) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{out.decode()[-2000:]}\n{err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback", *args],
        input=stdin,
        check=True,
        capture_output=True,
    ).stdout


def generate(out: Path, rows: int) -> tuple[Path, Path, str]:
    """(plain .csv.gz, encrypted .csv.gz.pgp, armoured private key), cached by row count."""
    import duckdb

    folder = out / f"import_pgp_{rows}"
    plain = folder / "plain" / f"{EVENT}_20260101120000.csv.gz"
    encrypted = folder / "encrypted" / f"{EVENT}_20260101120000.csv.gz.pgp"
    key_file = folder / "private.asc"
    if plain.exists() and encrypted.exists() and key_file.exists():
        return plain, encrypted, key_file.read_text()
    shutil.rmtree(folder, ignore_errors=True)
    plain.parent.mkdir(parents=True)
    encrypted.parent.mkdir(parents=True)
    duckdb.sql(
        f"""
        COPY (
            SELECT 'user-' || (i * 7919 % 200000) AS USER_ID,
                   strftime(TIMESTAMP '2026-01-01' + to_seconds(i), '%Y-%m-%d %H:%M:%S') AS EVENT_TS,
                   CASE WHEN i % {BAD_EVERY} = 7 THEN 'n/a' ELSE (i % 10000 / 100.0)::VARCHAR END
                       AS AMOUNT,
                   CASE WHEN i % 3 = 0 THEN 'yes' ELSE 'no' END AS IS_PAID,
                   strftime(DATE '2025-01-01' + (i % 365)::INTEGER, '%d/%m/%Y') AS PAID_AT,
                   ['free', 'pro', 'enterprise'][i % 3 + 1] AS PLAN,
                   'internal-' || i AS INTERNAL
            FROM range({rows}) t(i)
        ) TO '{plain}' (HEADER, COMPRESSION gzip)
        """
    )
    home = Path(tempfile.mkdtemp(prefix="bench-gpg-"))
    try:
        _gpg(
            home,
            "--passphrase",
            PASSPHRASE,
            "--quick-gen-key",
            "bench@ingest.test",
            "future-default",
            "default",
            "never",
        )
        key_file.write_bytes(
            _gpg(
                home,
                "--passphrase",
                PASSPHRASE,
                "--armor",
                "--export-secret-keys",
                "bench@ingest.test",
            )
        )
        _gpg(
            home,
            "-z",
            "0",
            "--trust-model",
            "always",
            "--recipient",
            "bench@ingest.test",
            "--output",
            str(encrypted),
            "--encrypt",
            str(plain),
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return plain, encrypted, key_file.read_text()


def _import_env(work: Path, folder: Path, key: str, pgp: bool) -> dict[str, str]:
    (work / "m.yaml").write_text(yaml.safe_dump(MANIFEST, sort_keys=False))
    imp = {
        "name": "bench",
        "type": "events",
        "event_name": EVENT,
        "folder": str(folder),
        "manifest": "m.yaml",
    }
    if pgp:
        imp["pgp"] = {"private_key_env": "BENCH_PGP_KEY", "passphrase_env": "BENCH_PGP_PASS"}
    (work / "ingest.yaml").write_text(yaml.safe_dump({"imports": [imp]}, sort_keys=False))
    env = dict(os.environ)
    env.update(
        INGEST_CONFIG=str(work / "ingest.yaml"),
        INGEST_WAREHOUSE_PATH=str(work / "warehouse.duckdb"),
        INGEST_LAKE_URL=str(work / "lake"),
        BENCH_PGP_KEY=key,
        BENCH_PGP_PASS=PASSPHRASE,
    )
    return env


def _check_counts(work: Path, rows: int) -> None:
    import duckdb

    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        read, loaded, rejected, status = con.execute(
            "SELECT rows_read, rows_loaded, rows_rejected, status FROM ingested_files"
        ).fetchone()
    bad = len(range(7, rows, BAD_EVERY))
    if (read, rejected, status) != (rows, bad, "ingested") or loaded + rejected > rows:
        raise SystemExit(f"unexpected counts: {read=} {loaded=} {rejected=} {status=}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    plain, encrypted, key = generate(args.out, args.rows)
    print(
        f"input: {args.rows:,} rows; {plain.name} {plain.stat().st_size / MIB:.1f} MiB, "
        f"{encrypted.name} {encrypted.stat().st_size / MIB:.1f} MiB"
    )
    cli = str(Path(sys.executable).with_name("ingest-pipeline"))
    results: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("decrypt", "raw", "import", "import+pgp")
    }
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
            work = Path(tmp)
            home = work / "gnupg"
            home.mkdir(mode=0o700)
            _gpg(home, "--import", stdin=key.encode())
            results["decrypt"].append(
                _run(
                    [
                        "gpg",
                        "--homedir",
                        str(home),
                        "--batch",
                        "--yes",
                        "--pinentry-mode",
                        "loopback",
                        "--passphrase-fd",
                        "0",
                        "--output",
                        str(work / "decrypted.csv.gz"),
                        "--decrypt",
                        str(encrypted),
                    ],
                    stdin=PASSPHRASE.encode(),
                )
            )
            results["raw"].append(
                _run(
                    [
                        sys.executable,
                        "-c",
                        "import duckdb, sys; duckdb.sql(f\"COPY (SELECT * FROM read_csv('{sys.argv[1]}')) "
                        "TO '{sys.argv[2]}' (FORMAT parquet)\")",
                        str(work / "decrypted.csv.gz"),
                        str(work / "raw.parquet"),
                    ]
                )
            )
            for side, folder, pgp in (
                ("import", plain.parent, False),
                ("import+pgp", encrypted.parent, True),
            ):
                run_dir = work / side.replace("+", "_")
                run_dir.mkdir()
                env = _import_env(run_dir, folder, key, pgp)
                results[side].append(_run([cli, "imports", "run", "bench"], env=env))
                _check_counts(run_dir, args.rows)
    med = {
        k: (statistics.median(t for t, _ in v), statistics.median(r for _, r in v))
        for k, v in results.items()
    }
    for side, (seconds, rss) in med.items():
        runs = ", ".join(f"{t:.2f}" for t, _ in results[side])
        print(f"{side:11s} median {seconds:6.2f} s  peak RSS {rss:7.1f} MiB   (runs: {runs})")
    ratio = med["import"][0] / med["raw"][0]
    with_pgp = med["import+pgp"][0] / (med["raw"][0] + med["decrypt"][0])
    print(f"ratio import / raw (decryption excluded): {ratio:.2f} (target <= {TARGET_RATIO})")
    print(f"ratio import+pgp / (raw + decrypt): {with_pgp:.2f}")
    rss = max(med["import"][1], med["import+pgp"][1])
    print(f"peak RSS of the import: {rss:.0f} MiB (target <= {TARGET_RSS_MIB} MiB)")


if __name__ == "__main__":
    main()
