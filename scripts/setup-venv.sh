#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment outside the repo, keyed by the Python and torch
# versions, and install the project into it in editable mode. Idempotent: a stamp keyed on the hash of
# pyproject.toml skips pip when nothing changed. Prints nothing but pip's errors on a warm cache.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:?VENV must be set (the Makefile sets it)}
PYTHON=${PYTHON:-python3}
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup-venv: creating $VENV" >&2
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.dopd-stamp"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) $ROOT"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$VENV/bin/python" -c 'import dopd_operator' 2>/dev/null; then
  exit 0
fi
echo "setup-venv: installing dopd[dev,worker] into $VENV (torch is large; first run takes minutes)" >&2
"$VENV/bin/pip" install -q -e "${ROOT}[dev,worker]"
echo "$want" > "$stamp"
