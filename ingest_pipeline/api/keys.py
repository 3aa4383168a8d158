"""API keys -> tenants, and the per-key rate limit. Nothing here knows about HTTP.

Keys are read once, from the environment variables `ingest.yaml` names, and kept only as
SHA-256 digests: a presented key is hashed and compared with every digest in constant time
(hmac.compare_digest, no early exit), so neither the answer's timing nor a memory dump gives a
key away. Keys are never logged, stored or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ingest_pipeline.config import IngestConfig, RateLimitConfig

log = logging.getLogger(__name__)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str  # which key (a digest prefix): the rate limit's bucket, never the key itself


class KeyRing:
    def __init__(self, keys: list[tuple[bytes, str]]) -> None:
        self._keys = keys

    @classmethod
    def from_config(cls, config: IngestConfig, environ: Mapping[str, str] | None = None) -> KeyRing:
        environ = os.environ if environ is None else environ
        keys = []
        for tenant, settings in config.tenants.items():
            for name in settings.key_envs():
                value = environ.get(name, "")
                if not value.strip():
                    # The variable's name only: its value is a secret.
                    log.warning("tenant %s: API key variable %s is not set", tenant, name)
                    continue
                keys.append((_digest(value), tenant))
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def caller(self, presented: str | None) -> Caller | None:
        """The tenant whose key `presented` is, or None (missing or unknown)."""
        if not presented:
            return None
        digest = _digest(presented)
        found: Caller | None = None
        for known, tenant in self._keys:  # every key is compared: the time does not say which
            if hmac.compare_digest(digest, known):
                found = Caller(tenant, known.hex()[:12])
        return found


class RateLimiter:
    """A token bucket per key (per process: with N workers a key gets N buckets)."""

    def __init__(self, limit: RateLimitConfig) -> None:
        self.rate = limit.per_second
        self.burst = float(limit.burst or max(1, math.ceil(limit.per_second)))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """0 when the request may go; else the seconds until a token is there."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate
