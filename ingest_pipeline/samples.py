"""Generated sample files for all four flat-file feeds, in NDJSON and CSV, plain and gzipped.

Used by `ingest-pipeline samples` (and the start script) so a new install has data flowing
through every feed, including a few bad rows that show up in the quarantine.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections.abc import Iterable

from ingest_pipeline.landing import LandingZone

BASE_TIMESTAMP = 1_767_225_600  # 2026-01-01T00:00:00Z


def _ndjson(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _csv(rows: list[dict]) -> bytes:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def sample_files(seed: int = 7, contacts: int = 40) -> dict[str, bytes]:
    """Landing key -> file content."""
    rng = random.Random(seed)
    keys = [f"contact-{i:03d}" for i in range(contacts)]
    accounts = [f"account-{i:02d}" for i in range(8)]
    identify = [
        {
            "contact_key": k,
            "email": f"{k}@example.com",
            "first_name": rng.choice(["Ada", "Bo", "Cy"]),
            "plan": rng.choice(["free", "pro", "enterprise"]),
        }
        for k in keys
    ]
    track = [
        {
            "event_text": rng.choice(["signed up", "opened app", "clicked link", "paid"]),
            "event_timestamp": BASE_TIMESTAMP + i * 37,
            "contact_key": rng.choice(keys),
            "plan": rng.choice(["free", "pro"]),
            "page": f"/p/{rng.randint(1, 9)}",
        }
        for i in range(120)
    ]
    group = [
        {
            "contact_key": k,
            "account_key": rng.choice(accounts),
            "account_name": "Acme " + str(rng.randint(1, 99)),
            "domain": "acme.example",
        }
        for k in keys
    ]
    crm = [
        {
            "email": f"{k}@example.com",
            "account": rng.choice(accounts),
            "created_at": "2026-01-0" + str(rng.randint(1, 9)) + "T10:00:00Z",
            "is_worked": rng.choice(["true", "false"]),
            "is_converted": rng.choice(["true", "false"]),
            "amount": round(rng.uniform(100, 5000), 2),
            "source": rng.choice(["web", "event"]),
        }
        for k in keys[:20]
    ]
    files = {
        "identify/sample_identify.jsonl": _ndjson(identify[:20]),
        "identify/sample_identify.csv.gz": gzip.compress(_csv(identify[20:])),
        "track/sample_track.ndjson.gz": gzip.compress(_ndjson(track[:60])),
        "track/sample_track.csv": _csv(track[60:]),
        "group/sample_group.json": _ndjson(group[:20]),
        "group/sample_group.csv.gzip": gzip.compress(_csv(group[20:])),
        "crm/sample_crm.csv": _csv(crm[:10]),
        "crm/sample_crm.jsonl.gz": gzip.compress(_ndjson(crm[10:])),
    }
    # A few rows a client would really send by mistake: they land in the quarantine.
    files["track/sample_track_with_errors.jsonl"] = _ndjson(track[:3]) + (
        b'{"event_text": "paid", "contact_key": "contact-001"}\n'
        b'{"event_text": "paid", "event_timestamp": 1767225600000, "contact_key": "contact-002"}\n'
        b"this line is not json\n"
    )
    return files


def write_samples(landing: LandingZone) -> list[str]:
    keys = []
    for key, body in sample_files().items():
        landing.put(key, body)
        keys.append(key)
    return keys
