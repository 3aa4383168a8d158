#!/usr/bin/env bash
# One command: set up, generate sample files in the landing folder, start the Dagster UI and daemon
# with the sensors running. Files are ingested by the sensors without further action.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
export INGEST_SENSOR_INTERVAL_SECONDS="${INGEST_SENSOR_INTERVAL_SECONDS:-10}"
.venv/bin/ingest-pipeline samples
exec .venv/bin/dagster dev -w workspace.yaml -h "${DAGSTER_HOST:-127.0.0.1}" -p "${DAGSTER_PORT:-3000}"
