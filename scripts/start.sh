#!/usr/bin/env bash
# One command: set up, generate sample files in the landing folder, start the Ingestion API and
# the Dagster UI and daemon with the sensors running. Files are ingested by the sensors without
# further action.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
export INGEST_SENSOR_INTERVAL_SECONDS="${INGEST_SENSOR_INTERVAL_SECONDS:-10}"
.venv/bin/ingest-pipeline samples

# The Ingestion API beside the UI. Without an ingest.yaml, a development one: tenant `default`
# with a key made for this start (kept in this shell's environment only, never in a file).
if [ -z "${INGEST_CONFIG:-}" ] && [ ! -f ingest.yaml ]; then
  mkdir -p data
  export INGEST_CONFIG="$PWD/data/dev-ingest.yaml"
  printf 'tenants:\n  default:\n    api_key_env: INGEST_DEV_API_KEY\n' > "$INGEST_CONFIG"
  export INGEST_DEV_API_KEY="${INGEST_DEV_API_KEY:-dev-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(12))')}"
fi
API_PORT="${INGEST_API_PORT:-8000}"
.venv/bin/ingest-pipeline api --host "${INGEST_API_HOST:-127.0.0.1}" --port "$API_PORT" &
API_PID=$!
trap 'kill "$API_PID" 2>/dev/null || true' EXIT
cat <<MSG

Ingestion API: http://127.0.0.1:$API_PORT (OpenAPI docs at /docs). Your first upload:

  curl -s -X POST http://127.0.0.1:$API_PORT/ingestion/upload-json \\
    -H "x-api-key: ${INGEST_DEV_API_KEY:-<your key>}" -H 'Content-Type: application/json' \\
    -d '{"stream": "account", "data": [{"type": "account", "account_id": "acme-corp", "domain": "acme.com"}]}'

MSG
# `dg dev` from inside DAGSTER_HOME with the project's venv active: it then starts with no
# warnings to decode (a dagster.yaml beside the cwd other than DAGSTER_HOME's, a venv mismatch).
# The code location still runs in the project folder (workspace.yaml's working_directory).
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
REPO="$PWD"
cd "$DAGSTER_HOME"
dg dev -w "$REPO/workspace.yaml" -h "${DAGSTER_HOST:-127.0.0.1}" -p "${DAGSTER_PORT:-3000}"
