"""pyarrow, set up once for the pipeline: import `pa` from here.

pyarrow's first `pa.array`/`pa.table` call probes for pandas and imports it when installed
(0.7-0.9 s of CPU in every run and CLI process; the pipeline never hands pyarrow a pandas
object). The probe is made here with pandas hidden, so it finds none and is not made again.
Anything that later needs pandas from pyarrow (`Table.to_pandas`) still gets it: pyarrow
imports pandas on demand when an operation requires it.
"""

from __future__ import annotations

import importlib.abc
import sys

import pyarrow as pa


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("hidden from pyarrow's probe", name="pandas")


def _probe_without_pandas() -> None:
    if "pandas" in sys.modules:  # already paid for: nothing to save
        return
    hide = _NoPandas()
    sys.meta_path.insert(0, hide)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(hide)


_probe_without_pandas()

__all__ = ["pa"]
