"""The identity graph's rule, independent of any storage: which identities are one person.

Identities are nodes; an alias (alias_key -> contact_key) is an edge. A person is a connected
component of the applied edges. Edges are applied in a canonical order - (recorded_at,
alias_key, contact_key), a total order since an alias key has one row - and an edge that would
join two clusters into one larger than the cap is refused. The result therefore depends only on
the set of identities and the set of alias rows, never on the order files, lines or merges came
in. A person's id is derived from the smallest identity of its cluster (tenant and key hashed),
so it too depends only on the cluster's identities.

The same order-independence makes the graph incremental: clusters only merge along edges, so
the components of *all* edges (refused ones included: `graph_id`) are independent of each other,
and recomputing the components a batch touches, from their own edges, gives what a rebuild of
the whole tenant gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_MAX_CLUSTER_SIZE = 500


def person_id(tenant_id: str, smallest_identity: str) -> str:
    """A person's id: from the tenant and the smallest identity of the cluster (the SQL twin is
    resolve.person_id_sql)."""
    return "p_" + hashlib.md5(f"{tenant_id}\0{smallest_identity}".encode()).hexdigest()[:20]


def graph_id(tenant_id: str, smallest_identity: str) -> str:
    """The id of a component of all alias edges, applied or refused."""
    return "g_" + hashlib.md5(f"{tenant_id}\0{smallest_identity}".encode()).hexdigest()[:20]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        if a == b:
            return
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]


@dataclass(frozen=True)
class Resolution:
    """Per identity (in the order given): its person, its component of all edges and its
    cluster's size; per edge (in the order given): None if applied, else why it was refused."""

    identities: list[str]
    person_ids: list[str]
    graph_ids: list[str]
    cluster_sizes: list[int]
    refused: list[str | None]


def resolve(
    tenant_id: str,
    identities: Iterable[str],
    edges: Sequence[tuple[str, str]],
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE,
) -> Resolution:
    """Resolve one tenant's identities. `edges`: (alias_key, contact_key) in canonical order
    (recorded_at, alias_key, contact_key); their endpoints count as identities too."""
    index: dict[str, int] = {}
    names: list[str] = []
    for key in identities:
        if key not in index:
            index[key] = len(names)
            names.append(key)
    pairs = []
    for alias, contact in edges:
        for key in (alias, contact):
            if key not in index:
                index[key] = len(names)
                names.append(key)
        pairs.append((index[alias], index[contact]))
    n = len(names)
    every, capped = _UnionFind(n), _UnionFind(n)
    refused: list[str | None] = []
    for (a, b), (alias, contact) in zip(pairs, edges, strict=True):
        every.union(every.find(a), every.find(b))
        ra, rb = capped.find(a), capped.find(b)
        if ra == rb:
            refused.append(None)
            continue
        grown = capped.size[ra] + capped.size[rb]
        if grown > max_cluster_size:
            refused.append(
                f"alias not applied: joining {alias!r} to {contact!r} would make one person of "
                f"{grown} identities, past the cluster-size cap of {max_cluster_size} "
                "(identity.max_cluster_size in ingest.yaml); an identity shared by many people "
                "(a team mailbox, a test account) usually causes this"
            )
            continue
        capped.union(ra, rb)
        refused.append(None)
    smallest_capped: dict[int, str] = {}
    smallest_every: dict[int, str] = {}
    roots_capped = [capped.find(i) for i in range(n)]
    roots_every = [every.find(i) for i in range(n)]
    for i, name in enumerate(names):
        rc, re_ = roots_capped[i], roots_every[i]
        if rc not in smallest_capped or name < smallest_capped[rc]:
            smallest_capped[rc] = name
        if re_ not in smallest_every or name < smallest_every[re_]:
            smallest_every[re_] = name
    person = {r: person_id(tenant_id, k) for r, k in smallest_capped.items()}
    graph = {r: graph_id(tenant_id, k) for r, k in smallest_every.items()}
    return Resolution(
        identities=names,
        person_ids=[person[r] for r in roots_capped],
        graph_ids=[graph[r] for r in roots_every],
        cluster_sizes=[capped.size[r] for r in roots_capped],
        refused=refused,
    )
