#!/usr/bin/env bash
# README main command: creates/reuses .venv, then runs the whole REALM story on the embedded default
# world (data -> vocab -> ICT -> REALM with index refreshes -> ORQA -> eval -> exports -> answers).
# Extra arguments go to run_demo.py (see `python run_demo.py --help`).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$REPO"
exec "$VENV/bin/python" run_demo.py "$@"
