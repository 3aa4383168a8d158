"""Fuzz the file reader for longer than CI does: the property of
ingest_pipeline_tests/test_fuzz_reader.py (`check_case`: process_file never raises, every record
is loaded or quarantined once with a line number and a reason, or the file is refused with an
actionable reason) over many more inputs.

Coverage-guided with atheris (libFuzzer over the Python code of ingest_pipeline; DuckDB itself is
not instrumented). Install it with the optional extra, then run from the repository root:

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python scripts/fuzz_reader.py --seconds 3600 --seed 1

Each input's first byte picks the file format, compression and feed; the rest is the file's
content (gzipped when the name says so; half of the gzip inputs are landed as they are, to fuzz
the gzip reader too). The corpus starts from the module's hostile seeds (those under 64 KiB) and
grows in --corpus (default: ingest_pipeline-fuzz-corpus in the temp folder, outside the
repository). A failing input is written by
libFuzzer as ./crash-<sha1>; replay it with:

    .venv/bin/python scripts/fuzz_reader.py --replay crash-<sha1>

Without atheris (or with --engine hypothesis) the same property runs on the hypothesis
strategies of the test module, batch after batch with seeds --seed, --seed + 1, ... until
--seconds have passed; failures are shrunk and printed:

    .venv/bin/python scripts/fuzz_reader.py --engine hypothesis --seconds 600 --seed 7
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FORMATS = (".jsonl", ".json", ".ndjson", ".csv")
COMPRESSIONS = ("", ".gz", ".gzip")


def case_of(data: bytes):  # noqa: ANN201 - a test_fuzz_reader.Case
    """The case an atheris input stands for (first byte: format, compression, feed, raw)."""
    from ingest_pipeline.feeds import FEEDS
    from ingest_pipeline_tests.test_fuzz_reader import Case

    pick = data[0] if data else 0
    feeds = sorted(FEEDS)
    fmt = FORMATS[pick % len(FORMATS)]
    compression = COMPRESSIONS[(pick // 4) % len(COMPRESSIONS)]
    feed = feeds[(pick // 12) % len(feeds)]
    raw = bool(compression) and pick >= 128
    return Case(f"f{fmt}{compression}", feed, data[1:], raw_body=raw)


def input_of(case) -> bytes:  # noqa: ANN001 - a test_fuzz_reader.Case
    """The atheris input of a seed case (the inverse of case_of, for the starting corpus)."""
    from ingest_pipeline.feeds import FEEDS

    name = case.name.lower()
    fmt = next(i for i, f in enumerate(FORMATS) if f in name)
    compression = 2 if name.endswith(".gzip") else 1 if name.endswith(".gz") else 0
    feed = sorted(FEEDS).index(case.feed)
    pick = fmt + 4 * compression + 12 * feed + (128 if case.raw_body else 0)
    return bytes([pick]) + case.content


def seed_corpus(corpus: Path) -> None:
    from ingest_pipeline_tests.test_fuzz_reader import SEEDS

    corpus.mkdir(parents=True, exist_ok=True)
    for case in SEEDS:
        if len(case.content) <= 64 * 1024:
            data = input_of(case)
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)


def run_atheris(args: argparse.Namespace) -> int:
    import atheris

    with atheris.instrument_imports(include=["ingest_pipeline"]):
        import ingest_pipeline.bronze  # noqa: F401 - instrumented for coverage
        import ingest_pipeline.parsing  # noqa: F401
        import ingest_pipeline.reading  # noqa: F401
        import ingest_pipeline.validation  # noqa: F401
    from ingest_pipeline_tests.test_fuzz_reader import check_case

    seed_corpus(args.corpus)

    def one_input(data: bytes) -> None:
        check_case(case_of(data))

    argv = [
        sys.argv[0],
        str(args.corpus),
        f"-max_total_time={args.seconds}",
        f"-seed={args.seed}",
        f"-max_len={args.max_len}",
        "-rss_limit_mb=4096",
        "-timeout=120",
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


def run_hypothesis(args: argparse.Namespace) -> int:
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from ingest_pipeline_tests.test_fuzz_reader import cases, check_case

    deadline = time.monotonic() + args.seconds
    for n in count():
        if time.monotonic() >= deadline:
            print(f"no failure in {n} batches of {args.batch} cases")
            return 0

        @seed(args.seed + n)
        @settings(
            max_examples=args.batch,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink],
            print_blob=True,
        )
        @given(case=cases())
        def prop(case) -> None:  # noqa: ANN001
            check_case(case)

        print(f"batch {n}: seed {args.seed + n}", flush=True)
        prop()


def replay(path: Path) -> int:
    from ingest_pipeline_tests.test_fuzz_reader import check_case

    case = case_of(path.read_bytes())
    print(case)
    report = check_case(case)
    print(report.status, report.rows_read, report.rows_valid, report.rows_rejected, report.error)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=1, help="random seed (reproducible runs)")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument(
        "--corpus", type=Path, default=Path(tempfile.gettempdir()) / "ingest_pipeline-fuzz-corpus"
    )
    parser.add_argument("--max-len", type=int, default=256 * 1024, help="atheris input size")
    parser.add_argument("--batch", type=int, default=200, help="hypothesis cases per seed")
    parser.add_argument("--replay", type=Path, help="run one atheris input and report it")
    args = parser.parse_args()
    if args.replay:
        return replay(args.replay)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install -e '.[fuzz]'): using hypothesis")
            engine = "hypothesis"
        else:
            engine = "atheris"
    return run_atheris(args) if engine == "atheris" else run_hypothesis(args)


if __name__ == "__main__":
    sys.exit(main())
