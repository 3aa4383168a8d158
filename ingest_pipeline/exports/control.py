"""Control files: one JSON object per data file, written only once that data file is complete.

{"delta": true, "file_count": 1,
 "files": [{"bucket", "path", "file_type", "file", "rows", "flow_ID", "flow_name"}]}
"""

from __future__ import annotations

import json
from typing import Any


def control_document(
    *,
    bucket: str,
    path: str,
    file_type: str,
    file_url: str,
    rows: int,
    flow_id: int,
    flow_name: str,
) -> dict[str, Any]:
    return {
        "delta": True,  # reserved by the format: always true
        "file_count": 1,  # reserved by the format: one data file per control file
        "files": [
            {
                "bucket": bucket,
                "path": path,
                "file_type": file_type,
                "file": file_url,
                "rows": rows,
                "flow_ID": flow_id,
                "flow_name": flow_name,
            }
        ],
    }


def control_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
