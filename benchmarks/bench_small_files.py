"""Many small files through the real daemon and sensor, and one file's latency (issue #8).

    .venv/bin/python benchmarks/bench_small_files.py                      # 10,000 x 20 lines, local
    .venv/bin/python benchmarks/bench_small_files.py --landing s3         # the same from S3 (moto)
    .venv/bin/python benchmarks/bench_small_files.py --latency 6          # one file at a time, 6 drops
    .venv/bin/python benchmarks/bench_small_files.py --files 10000 --cli  # `ingest-pipeline ingest`

Throughput: `dagster-daemon run` is started on the project's workspace and dagster.yaml with a
5 s sensor interval (INGEST_SENSOR_INTERVAL_SECONDS, the figure the goal names), and is left to
start its sensors; then N track files of L lines are moved into the landing folder at once (each
written aside first and renamed in: a reader never sees half a file), or, with `--landing s3`,
they are uploaded to a bucket of a moto server running in its own process. The clock runs from the
moment the last file has landed until every file has a final status in the ledger
(`ingested_files`, polled every 2 s); files/s = N / that time. The warehouse is then checked: every
file ingested, every event there.

Latency: with the daemon running and idle, one file of L lines is dropped, the time until its
events are in the warehouse is taken; repeated `--latency` times, median and range reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T0 = 1_767_225_600


def body(file: int, lines: int) -> bytes:
    return "".join(
        json.dumps(
            {
                "event_text": ("opened", "clicked", "bought")[i % 3],
                "event_timestamp": T0 + file * lines + i,
                "contact_key": f"c{file}-{i}",
                "plan": "pro",
            }
        )
        + "\n"
        for i in range(lines)
    ).encode()


def ledger(wh: Path) -> tuple[int, int, int] | None:
    """(files, final files, events) or None when the warehouse is busy or not there yet."""
    if not wh.exists():
        return None
    try:
        con = duckdb.connect(str(wh), read_only=True)
    except duckdb.Error:
        return None
    try:
        files, final = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE status IN "
            "('ingested', 'failed', 'skipped', 'vanished')) FROM ingested_files"
        ).fetchall()[0]
        events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
        return files, final, events
    except duckdb.Error:
        return None
    finally:
        con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """A landing zone, lake, warehouse and Dagster home under one folder, and the daemon."""

    def __init__(self, root: Path, landing: str, interval: int) -> None:
        self.root, self.kind = root, landing
        self.wh = root / "warehouse.duckdb"
        self.env = {
            **os.environ,
            "INGEST_LAKE_URL": str(root / "lake"),
            "INGEST_WAREHOUSE_PATH": str(self.wh),
            "INGEST_SENSOR_INTERVAL_SECONDS": str(interval),
            "INGEST_TENANT": "bench",
            "DAGSTER_HOME": str(root / "dagster_home"),
        }
        self.moto: subprocess.Popen | None = None
        if landing == "s3":
            port = free_port()
            self.moto = subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.env.update(
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_DEFAULT_REGION="us-east-1",
                INGEST_LANDING_URL="s3://bench-landing/drop",
            )
            os.environ.update(
                {
                    k: self.env[k]
                    for k in (
                        "AWS_ENDPOINT_URL",
                        "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY",
                        "AWS_DEFAULT_REGION",
                    )
                }
            )
            import boto3

            for _ in range(100):
                try:
                    boto3.client("s3").create_bucket(Bucket="bench-landing")
                    break
                except Exception:  # noqa: BLE001 - the server is still starting
                    time.sleep(0.1)
        else:
            self.env["INGEST_LANDING_URL"] = str(root / "landing")
            (root / "landing" / "track").mkdir(parents=True)
        home = root / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        subprocess.run(
            [str(BIN / "dagster"), "instance", "migrate"],
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.daemon: subprocess.Popen | None = None

    def start_daemon(self, settle: float) -> None:
        self.log = open(self.root / "daemon.log", "w")  # noqa: SIM115 - closed in stop()
        self.daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(settle)  # the code location loads, the sensors tick once (nothing to do)

    def stop(self) -> None:
        if self.daemon is not None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self.daemon.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.log.close()
        if self.moto is not None:
            self.moto.terminate()

    def land(self, files: dict[str, bytes]) -> float:
        """Land the files at once; returns the moment the last one landed."""
        if self.kind == "s3":
            from concurrent.futures import ThreadPoolExecutor

            import boto3

            client = boto3.client("s3")
            # uploaded to a staging prefix, then copied in? S3 has no rename: upload in parallel
            with ThreadPoolExecutor(16) as pool:
                list(
                    pool.map(
                        lambda kv: client.put_object(
                            Bucket="bench-landing", Key=f"drop/{kv[0]}", Body=kv[1]
                        ),
                        files.items(),
                    )
                )
            return time.monotonic()
        staging = self.root / "staging"
        staging.mkdir(exist_ok=True)
        for key, data in files.items():
            (staging / Path(key).name).write_bytes(data)
        for key in files:
            os.replace(staging / Path(key).name, self.root / "landing" / key)
        return time.monotonic()

    def wait_final(self, files: int, events: int, deadline: float, poll: float = 2.0) -> float:
        while time.monotonic() < deadline:
            state = ledger(self.wh)
            if state is not None and state[0] >= files and state[1] >= files and state[2] >= events:
                return time.monotonic()
            time.sleep(poll)
        raise SystemExit(f"not every file final in time: {ledger(self.wh)}")


def timeline(wh: Path, landed_wall: float) -> list[dict]:
    """Per run, seconds after the last file landed: when its files were requested, its bronze
    step started, its files were final. Where the time goes."""
    con = duckdb.connect(str(wh), read_only=True)
    try:
        rows = con.execute(
            "SELECT count(*), epoch(min(queued_at)), epoch(min(started_at)), "
            "epoch(max(finished_at)) FROM ingested_files "
            "GROUP BY run_id ORDER BY 2"
        ).fetchall()
    finally:
        con.close()
    keys = ("files", "requested_s", "bronze_started_s", "final_s")
    return [
        {k: v if k == "files" else round(v - landed_wall, 1) for k, v in zip(keys, r, strict=True)}
        for r in rows
    ]


def throughput(args: argparse.Namespace, root: Path) -> dict:
    site = Site(root, args.landing, args.interval)
    files = {f"track/f{i:06d}.jsonl": body(i, args.lines) for i in range(args.files)}
    try:
        if args.cli:
            landed = site.land(files)
            started = time.monotonic()
            subprocess.run(
                [str(BIN / "ingest-pipeline"), "ingest", "--feed", "track"],
                env=site.env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            done = time.monotonic()
            landed = started
        else:
            site.start_daemon(args.settle)
            landed = site.land(files)
            landed_wall = time.time()
            done = site.wait_final(args.files, args.files * args.lines, landed + args.timeout)
    finally:
        site.stop()
    state = ledger(site.wh)
    runs = [] if args.cli else timeline(site.wh, landed_wall)
    seconds = done - landed
    result = {
        "mode": "cli" if args.cli else "daemon",
        "landing": args.landing,
        "files": args.files,
        "lines": args.lines,
        "seconds": round(seconds, 2),
        "files_per_second": round(args.files / seconds, 1),
        "ledger": state,
        "runs": runs,
    }
    assert state is not None and state[2] == args.files * args.lines, state
    return result


def latency(args: argparse.Namespace, root: Path) -> dict:
    site = Site(root, args.landing, args.interval)
    times = []
    try:
        site.start_daemon(args.settle)
        for i in range(args.latency):
            landed = site.land({f"track/one-{i}.jsonl": body(10_000_000 + i, args.lines)})
            done = site.wait_final(i + 1, (i + 1) * args.lines, landed + args.timeout, poll=0.1)
            times.append(done - landed)
            print(f"  drop {i + 1}: {times[-1]:.2f} s", flush=True)
            time.sleep(args.interval * 0.37)  # land at varying points of the sensor interval
    finally:
        site.stop()
    return {
        "mode": "latency",
        "landing": args.landing,
        "drops": len(times),
        "p50_seconds": round(statistics.median(times), 2),
        "min_seconds": round(min(times), 2),
        "max_seconds": round(max(times), 2),
        "seconds": [round(t, 2) for t in times],
        "sensor_interval": args.interval,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--landing", choices=["local", "s3"], default="local")
    parser.add_argument("--interval", type=int, default=5, help="sensor interval, seconds")
    parser.add_argument("--settle", type=float, default=20.0, help="daemon start-up wait, s")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--latency", type=int, default=0, help="measure N single drops instead")
    parser.add_argument("--cli", action="store_true", help="ingest with the CLI, no daemon")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-small-", dir=args.out))
    try:
        result = latency(args, root) if args.latency else throughput(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args.out / f"small_files_{result['mode']}_{stamp}.json").write_text(
        json.dumps(result, indent=2)
    )


if __name__ == "__main__":
    main()
