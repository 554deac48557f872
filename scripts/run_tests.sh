#!/usr/bin/env bash
# README test command: creates/reuses .venv, installs realm-tf2 with test extras, runs the whole suite
# (slow end-to-end tests included). Extra arguments go to pytest, e.g. -m "not slow".
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$REPO"
# pytest.ini sets testpaths=tests, used when no path is given.
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
