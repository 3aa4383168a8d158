"""Flow feed exports (SPEC section 7): membership deltas, data and control files, targets.

Plain modules, no Dagster: `export.export_flow` is what the Dagster assets, tests and the benchmark
call. See docs/ARCHITECTURE.md, "Flow exports: exactly once".
"""
