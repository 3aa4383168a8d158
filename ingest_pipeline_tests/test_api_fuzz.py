"""schemathesis against the service's own OpenAPI schema, over real HTTP: whatever it sends to
any operation, with or without a key, the answer is never a 5xx."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from ingest_pipeline_tests.api_server import KEY_ENV, KEYS, RunningApi, running_api


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    saved = {name: os.environ.get(name) for name in KEY_ENV}
    os.environ.update(KEY_ENV)
    root = tmp_path_factory.mktemp("fuzz")
    limits = {"max_json_bytes": 64 * 1024, "rate_limit": None}
    try:
        with running_api(root / "landing", root / "warehouse.duckdb", api=limits) as api:
            yield api
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_no_input_makes_the_service_fail(fuzzed_api: RunningApi) -> None:
    # Each operation's cases drawn by schemathesis and run through hypothesis here (its pytest
    # plugin's lazy fixtures do not run under this pytest).
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9  # every path and method of the service
    failures: list[tuple[str, str, int, str]] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            for headers in ({"x-api-key": KEYS["acme"]}, {}):
                response = case.call(headers=headers, timeout=30)
                if response.status_code >= 500:
                    failures.append(
                        (case.method, case.formatted_path, response.status_code, response.text)
                    )

        run()
    assert not failures, failures[:5]
