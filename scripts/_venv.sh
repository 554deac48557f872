# Sourced by the README commands: create (or reuse) ./.venv and install realm-tf2 into it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REALM_VENV:-$REPO/.venv}"
EXTRAS="${REALM_EXTRAS:-test}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.realm_tf2_installed_${EXTRAS//,/_}"
if [ ! -f "$STAMP" ] || [ "$REPO/setup.py" -nt "$STAMP" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$REPO[$EXTRAS]"
  touch "$STAMP"
fi
export TF_USE_LEGACY_KERAS=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
