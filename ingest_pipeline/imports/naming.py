"""Which files of an import's folder are its files: `<PREFIX>_<datetime>.csv[.gz][.pgp|.gpg]`,
directly in the folder, the datetime in the import's format (strftime directives)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_TAIL = re.compile(r"(?i)\.csv(\.gz)?(\.pgp|\.gpg)?")


@dataclass(frozen=True)
class NameVerdict:
    name: str
    matches: bool
    reason: str = ""  # why it is ignored
    stamp: datetime | None = None  # the datetime in the name
    encrypted: bool = False


def file_verdict(name: str, prefix: str, datetime_format: str) -> NameVerdict:
    """Whether `name` (a file directly in the folder) is one of the import's files, and if not
    why, in words a person can act on."""
    expected = f"{prefix}_<datetime>.csv[.gz][.pgp|.gpg] with the datetime as {datetime_format}"
    if not name.startswith(f"{prefix}_"):
        return NameVerdict(name, False, f"the name does not begin with '{prefix}_' ({expected})")
    rest = name[len(prefix) + 1 :]
    tail = next((m for m in _TAIL.finditer(rest) if m.end() == len(rest)), None)
    if tail is None:
        return NameVerdict(
            name,
            False,
            f"the name does not end with .csv, .csv.gz, then optionally .pgp or .gpg ({expected})",
        )
    stamp_text = rest[: tail.start()]
    try:
        stamp = datetime.strptime(stamp_text, datetime_format)
    except ValueError:
        return NameVerdict(
            name,
            False,
            f"'{stamp_text}' does not match the file-name datetime format '{datetime_format}' "
            f"(e.g. '{datetime(2026, 1, 31, 23, 59, 58).strftime(datetime_format)}')",
        )
    return NameVerdict(name, True, stamp=stamp, encrypted=bool(tail.group(2)))


SUBFOLDER_REASON = "in a sub-folder: imports never look inside sub-folders"
