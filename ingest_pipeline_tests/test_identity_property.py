"""Identity resolution against an independent oracle: random alias chains, events and person
properties split over random Kissmetrics files, ingested in random orders and batchings, give
the `identities`, `events_resolved` and `people` an independent union-find written here says -
with the cluster-size cap and the placeholder blocklist - and a rebuild from scratch gives the
same identities."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_pipeline import warehouse
from ingest_pipeline.feeds import DEFAULT_PLACEHOLDER_IDENTITIES
from ingest_pipeline.identity.resolve import rebuild_identities
from ingest_pipeline_tests.helpers import T0, Harness, Landed, ndjson

IDENTITIES = ["ann", "bob", "cy", "dee", "ed", "flo", "gus"]
PLACEHOLDERS = ["null", "Anonymous", " ", "0"]  # in the default blocklist, as sent


def _line(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["alias", "alias", "event", "props"]))
    person = draw(st.sampled_from(IDENTITIES + PLACEHOLDERS[:1]))
    t = 1_700_000_000 + draw(st.integers(0, 4))  # few distinct times: ties happen
    if kind == "alias":
        other = draw(st.sampled_from(IDENTITIES + PLACEHOLDERS))
        return {"_p": person, "_p2": other, "_t": t}
    if kind == "event":
        return {"_p": person, "_n": draw(st.sampled_from(["signed up", "paid"])), "_t": t}
    attr = draw(st.sampled_from(["plan", "city"]))
    return {"_p": person, "_t": t, attr: draw(st.integers(0, 3))}


@st.composite
def _scenario(draw: st.DrawFn) -> dict[str, Any]:
    lines = draw(
        st.lists(
            st.builds(lambda: None).flatmap(lambda _: st.composite(lambda d: _line(d))()),
            min_size=1,
            max_size=40,
        )
    )
    n_files = draw(st.integers(1, min(6, len(lines))))
    cuts = (
        sorted(draw(st.lists(st.integers(1, len(lines) - 1), max_size=n_files - 1, unique=True)))
        if len(lines) > 1
        else []
    )
    bounds = [0, *cuts, len(lines)]
    files = [lines[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    landed = draw(st.permutations(range(len(files))))  # landing order differs from file order
    return {
        "files": files,
        "landed": list(landed),
        "cap": draw(st.sampled_from([2, 3, 500])),
        "order_seed": draw(st.integers(0, 10_000)),
        "batch": draw(st.booleans()),
    }


def _person_id(tenant: str, smallest: str) -> str:
    return "p_" + hashlib.md5(f"{tenant}\0{smallest}".encode()).hexdigest()[:20]


def _placeholder(value: str) -> bool:
    # the default list, as the feed declares it
    return value.strip().lower() in DEFAULT_PLACEHOLDER_IDENTITIES


def _oracle(
    files: list[list[dict[str, Any]]],
    landed_at: list[datetime],
    uris: list[str],
    cap: int,
    tenant: str,
) -> dict[str, Any]:
    """Plain Python: which lines are valid, the alias winners, the capped components, views."""
    valid = []  # (file index, line number, record)
    for fi, lines in enumerate(files):
        for ln, rec in enumerate(lines, start=1):
            if _placeholder(rec["_p"]) or ("_p2" in rec and _placeholder(rec["_p2"])):
                continue
            valid.append((fi, ln, rec))
    seen = {rec["_p"].strip() for _, _, rec in valid} | {
        rec["_p2"].strip() for _, _, rec in valid if "_p2" in rec
    }
    # alias rows: per alias key the newest _t, then newest landed, then uri, then later line
    winners: dict[str, tuple] = {}
    for fi, ln, rec in valid:
        if "_p2" not in rec:
            continue
        rank = (rec["_t"], landed_at[fi], uris[fi], ln)
        key = rec["_p2"].strip()
        if key not in winners or rank > winners[key][0]:
            winners[key] = (rank, rec["_p"].strip())
    edges = sorted((rank[0], alias, contact) for alias, (rank, contact) in winners.items())
    parent = {k: k for k in seen}
    size = dict.fromkeys(seen, 1)

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    refused = set()
    for _t, alias, contact in edges:
        a, b = find(alias), find(contact)
        if a == b:
            continue
        if size[a] + size[b] > cap:
            refused.add(alias)
            continue
        parent[b] = a
        size[a] += size[b]
    clusters: dict[str, set[str]] = {}
    for k in seen:
        clusters.setdefault(find(k), set()).add(k)
    person = {k: _person_id(tenant, min(members)) for members in clusters.values() for k in members}
    # person attributes: newest _t, then landed, uri, later line, over the whole cluster
    attrs: dict[str, dict[str, tuple]] = {}
    for fi, ln, rec in valid:
        if "_p2" in rec or "_n" in rec:
            continue
        for name, value in rec.items():
            if name.startswith("_"):
                continue
            pid = person[rec["_p"].strip()]
            rank = (rec["_t"], landed_at[fi], uris[fi], ln)
            if name not in attrs.setdefault(pid, {}) or rank > attrs[pid][name][0]:
                attrs[pid][name] = (rank, value)
    people = {
        person[min(members)]: (
            sorted(members),
            {n: v for n, (_, v) in attrs.get(person[min(members)], {}).items()},
        )
        for members in clusters.values()
    }
    events = {
        (rec["_p"].strip(), rec["_n"], rec["_t"]): person[rec["_p"].strip()]
        for _, _, rec in valid
        if "_n" in rec and "_p2" not in rec
    } | {
        (rec["_p"].strip(), rec["_n"], rec["_t"]): person[rec["_p"].strip()]
        for _, _, rec in valid
        if "_n" in rec and "_p2" in rec
    }
    return {"person": person, "people": people, "events": events, "refused": refused}


def _warehouse_state(con: Any) -> dict[str, Any]:
    person = dict(con.execute("SELECT contact_key, person_id FROM identities").fetchall())
    people = {
        pid: (list(ids), json.loads(attrs))
        for pid, ids, attrs in con.execute(
            "SELECT person_id, identities, attributes FROM people"
        ).fetchall()
    }
    events = {
        (c, e, int(ts.timestamp())): pid
        for c, e, ts, pid in con.execute(
            "SELECT contact_key, event_text, event_timestamp, person_id FROM events_resolved"
        ).fetchall()
    }
    refused = {
        a
        for (a,) in con.execute(
            "SELECT alias_key FROM aliases WHERE refused_reason IS NOT NULL"
        ).fetchall()
    }
    return {"person": person, "people": people, "events": events, "refused": refused}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=_scenario())
def test_identities_and_views_match_a_union_find_oracle(
    scenario: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("identity")
    h = Harness(root, max_cluster_size=scenario["cap"])
    files = scenario["files"]
    landed_at = [T0 + timedelta(minutes=m) for m in scenario["landed"]]
    landed = [
        Landed(f"kissmetrics/f{i}.jsonl", ndjson(lines), landed_at=landed_at[i])
        for i, lines in enumerate(files)
    ]
    reports = [h.parse(f) for f in landed]
    order = list(range(len(landed)))
    random.Random(scenario["order_seed"]).shuffle(order)  # merged in an order unrelated to landing
    h.replay([reports[i] for i in order], batch=scenario["batch"])

    expected = _oracle(files, landed_at, [f.source_uri for f in landed], scenario["cap"], h.tenant)
    with warehouse.connect(h.wh_path) as con:
        got = _warehouse_state(con)
        assert got == expected
        # every file accounted for: each line loaded, duplicate or rejected
        for read, loaded, dup, rejected in con.execute(
            "SELECT rows_read, rows_loaded, rows_duplicate, rows_rejected FROM ingested_files"
        ).fetchall():
            assert read == loaded + dup + rejected
        # rebuilt from scratch, the graph is the same
        before = con.execute(
            "SELECT * EXCLUDE (updated_at) FROM identities ORDER BY ALL"
        ).fetchall()
        with warehouse.transaction(con):
            rebuild_identities(con, scenario["cap"])
            after = con.execute(
                "SELECT * EXCLUDE (updated_at) FROM identities ORDER BY ALL"
            ).fetchall()
            assert after == before
            assert _warehouse_state(con) == expected
