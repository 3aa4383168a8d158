"""Where a flow's files go and what they are called (SPEC section 7).

<target>/<path>/<YYYY>/<MM>/<DD>/<client>_<flow>_<operation>_<random>_<YmdHMS>.<ext>
<same folder>/control_<data file name without extension>.json
"""

from __future__ import annotations

import posixpath
import secrets
from datetime import UTC, datetime

EXTENSIONS = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl"}


def random_token() -> str:
    """The `<random>` part of a data file name: 8 hex digits."""
    return secrets.token_hex(4)


def date_folder(path: str, exported_at: datetime) -> str:
    """'<path>/<YYYY>/<MM>/<DD>' ('<YYYY>/<MM>/<DD>' for an empty path), '/'-separated, UTC."""
    day = exported_at.astimezone(UTC).strftime("%Y/%m/%d")
    return posixpath.join(path.strip("/"), day) if path.strip("/") else day


def data_file_name(
    client: str, flow_name: str, operation: str, token: str, exported_at: datetime, file_format: str
) -> str:
    stamp = exported_at.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    return f"{client}_{flow_name}_{operation}_{token}_{stamp}.{EXTENSIONS[file_format]}"


def control_file_name(data_name: str) -> str:
    stem, _, _ = data_name.rpartition(".")
    return f"control_{stem or data_name}.json"
