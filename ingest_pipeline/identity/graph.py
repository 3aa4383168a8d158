"""The identity graph's rule, independent of any storage: which identities are one person.

Identities are nodes; an alias (alias_key -> contact_key) is an edge. A person is a connected
component of the applied edges. Edges are applied in a canonical order - (recorded_at,
alias_key, contact_key), a total order since an alias key has one row - and an edge that would
join two clusters into one larger than the cap is refused. The result therefore depends only on
the set of identities and the set of alias rows, never on the order files, lines or merges came
in. A person's id is derived from the smallest identity of its cluster (tenant and key hashed),
so it too depends only on the cluster's identities.

The same order-independence makes the graph incremental: clusters only merge along edges, so
the components of *all* edges (refused ones included) are independent of each other, and
recomputing the components a batch touches, from their own edges, gives what a rebuild of the
whole tenant gives. A component larger than its person (it holds a refused alias) has an id of
its own, `graph_id`; otherwise the person is the component.
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
    """Per identity (in the order given): its person, and its component of all edges when that
    is larger than its person (None: the same, i.e. no refused alias inside it); per edge (in
    the order given): None if applied, else why it was refused."""

    identities: list[str]
    person_ids: list[str]
    graph_ids: list[str | None]
    refused: list[str | None]


def _refusal(alias: str, contact: str, grown: int, cap: int) -> str:
    return (
        f"alias not applied: joining {alias!r} to {contact!r} would make one person of "
        f"{grown} identities, past the cluster-size cap of {cap} "
        "(identity.max_cluster_size in ingest.yaml); an identity shared by many people "
        "(a team mailbox, a test account) usually causes this"
    )


def _smallest(names: list[str], roots: list[int]) -> dict[int, str]:
    smallest: dict[int, str] = {}
    for name, root in zip(names, roots, strict=True):
        known = smallest.get(root)
        if known is None or name < known:
            smallest[root] = name
    return smallest


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
    capped = _UnionFind(n)
    refused: list[str | None] = []
    for (a, b), (alias, contact) in zip(pairs, edges, strict=True):
        ra, rb = capped.find(a), capped.find(b)
        if ra != rb:
            grown = capped.size[ra] + capped.size[rb]
            if grown > max_cluster_size:
                refused.append(_refusal(alias, contact, grown, max_cluster_size))
                continue
            capped.union(ra, rb)
        refused.append(None)
    roots = [capped.find(i) for i in range(n)]
    person = {r: person_id(tenant_id, k) for r, k in _smallest(names, roots).items()}
    graph_ids: list[str | None] = [None] * n
    if any(r is not None for r in refused):
        # Components of every edge, refused ones too: what a later batch must take together.
        every = _UnionFind(n)
        for a, b in pairs:
            every.union(every.find(a), every.find(b))
        every_roots = [every.find(i) for i in range(n)]
        graph = {r: graph_id(tenant_id, k) for r, k in _smallest(names, every_roots).items()}
        for i in range(n):
            # a component larger than the person holds a refused alias: it gets its own id
            if every.size[every_roots[i]] > capped.size[roots[i]]:
                graph_ids[i] = graph[every_roots[i]]
    return Resolution(
        identities=names,
        person_ids=[person[r] for r in roots],
        graph_ids=graph_ids,
        refused=refused,
    )
