"""`flows:` in ingest.yaml: every mistake is a load-time error naming its path (SPEC section 9)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest_pipeline.config import ConfigError, parse_config

SPEC_EXAMPLE = yaml.safe_load(
    """
tenants:
  acme:
    api_key_env: ACME_API_KEY
flows:
  - id: 42
    name: trial_signups
    client: acme
    tenant: acme
    segment:
      name: signed_up_last_7_days
      sql: >
        select contact_key as identifier, any_value(properties->>'plan') as plan
        from events where event_text = 'signed up'
          and event_timestamp > now() - interval 7 day group by 1
    actions: [email_welcome]
    variant: null
    format: csv
    hash_identity: false
    target: s3://exports-bucket
    target_password_env: null
    path: feeds/acme
    custom_contexts: [plan]
"""
)


def _with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(SPEC_EXAMPLE)
    for key, value in changes.items():
        if value is _DROP:
            del data["flows"][0][key]
        else:
            data["flows"][0][key] = value
    return data


_DROP = object()


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    return str(error.value)


def test_the_spec_example_loads() -> None:
    flow = parse_config(SPEC_EXAMPLE).flows[0]
    assert (flow.id, flow.name, flow.format, flow.path) == (
        42,
        "trial_signups",
        "csv",
        "feeds/acme",
    )
    assert flow.segment.sql.startswith("select contact_key")


def test_sftp_flow_with_key_and_schedule_loads() -> None:
    flow = parse_config(
        _with(
            target="sftp://feeds@sftp.example.com:2222/upload",
            target_key_env="ACME_SFTP_KEY",
            target_known_hosts="/etc/ingest/known_hosts",
            schedule="hourly",
        )
    ).flows[0]
    assert flow.schedule == "0 * * * *"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "red"}, "flows[0].colour: unknown key"),
        ({"format": "xml"}, "flows[0].format: must be one of csv, tsv, jsonl"),
        ({"segment": {"name": "s"}}, "flows[0].segment.sql: is required"),
        ({"segment": {"name": "s", "sql": "  "}}, "flows[0].segment.sql:"),
        ({"segment": {"name": "s", "sql": "selec 1"}}, "flows[0].segment.sql: syntax error"),
        (
            {"segment": {"name": "s", "sql": "delete from contacts"}},
            "flows[0].segment.sql: must be a single SELECT query",
        ),
        (
            {"segment": {"name": "s", "sql": "select 1 as identifier; select 2 as identifier"}},
            "flows[0].segment.sql: must be a single SELECT query",
        ),
        (
            {
                "segment": {
                    "name": "s",
                    "sql": "select contact_key as identifier from main.contacts",
                }
            },
            "flows[0].segment.sql: reads 'main.contacts'",
        ),
        (
            {
                "segment": {
                    "name": "s",
                    "sql": "select contact_key as identifier from wh.main.events",
                }
            },
            "flows[0].segment.sql: reads 'wh.main.events'",
        ),
        (
            {"segment": {"name": "s", "sql": "select * from read_csv('/etc/passwd')"}},
            "flows[0].segment.sql: may not call table function 'read_csv'",
        ),
        (
            {"segment": {"name": "s", "sql": "select identifier from flow_memberships"}},
            "flows[0].segment.sql: reads unknown table 'flow_memberships'",
        ),
        ({"tenant": "globex"}, "flows[0].tenant: unknown tenant 'globex'"),
        ({"target": "ftp://host/x"}, "flows[0].target: 'ftp://host/x': unsupported scheme 'ftp'"),
        ({"target": "s3://"}, "flows[0].target: 's3://' has no bucket"),
        ({"target": "sftp://host:22/x"}, "flows[0].target: 'sftp://host:22/x' has no user"),
        (
            {"target": "sftp://u@host:abc"},
            "flows[0].target: 'sftp://u@host:abc' has an invalid port",
        ),
        ({"target": "sftp://u@h"}, "flows[0]: an sftp target needs target_password_env"),
        ({"target_password_env": "PW"}, "flows[0]: target_password_env only apply to sftp://"),
        ({"target_password_env": "not a name"}, "flows[0].target_password_env: must be the name"),
        ({"custom_contexts": ["plan", "operation"]}, "flows[0].custom_contexts: 'operation' is"),
        ({"custom_contexts": ["plan", "plan"]}, "flows[0].custom_contexts: custom contexts must"),
        ({"custom_contexts": ["two words"]}, "flows[0].custom_contexts: 'two words'"),
        ({"actions": ["a", "a"]}, "flows[0].actions: actions must be distinct"),
        ({"actions": ["data_feed"]}, "flows[0].actions: 'data_feed' is reserved"),
        ({"name": "trial signups"}, "flows[0].name: may use letters, digits"),
        ({"client": _DROP}, "flows[0].client: is required"),
        ({"schedule": "every tuesday"}, "flows[0].schedule: 'every tuesday' is not hourly"),
        ({"hash_identity": "maybe"}, "flows[0].hash_identity:"),
    ],
)
def test_flow_errors_name_the_path(changes: dict[str, Any], message: str) -> None:
    assert message in _error(_with(**changes))


def test_a_password_in_the_target_url_is_refused_and_not_echoed() -> None:
    text = _error(_with(target="sftp://feeds:hunter2@sftp.example.com"))
    assert "flows[0].target: sftp target must not contain a password" in text
    assert "hunter2" not in text


def test_every_problem_is_listed_and_duplicate_ids_are_caught() -> None:
    data = _with(format="xml", tenant="globex")
    text = _error(data)
    assert "flows[0].format" in text  # field errors first...
    data = copy.deepcopy(SPEC_EXAMPLE)
    data["flows"].append(copy.deepcopy(data["flows"][0]))
    data["flows"][1]["tenant"] = "globex"
    text = _error(data)
    assert "flows[1].tenant: unknown tenant 'globex'" in text
    assert "flows[1].id: 42 is also the id of flows[0]" in text


def test_the_readme_flow_example_loads() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Flow exports") :]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    config = parse_config(yaml.safe_load(example.group(1)))
    assert [(f.id, f.format) for f in config.flows] == [(42, "csv"), (43, "tsv"), (44, "jsonl")]
