#!/usr/bin/env bash
# Create .venv inside the checkout (once) and install edgedyn with exact pins.
# Used by the README's two commands and by CI; safe to run again (a no-op when current).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.edgedyn-installed
want=$(cat constraints.txt setup.cfg | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] creating .venv and installing pinned dependencies (about 2 minutes)..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,lint]"
echo "$want" > "$stamp"
echo "[bootstrap] done" >&2
