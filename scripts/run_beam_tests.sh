#!/usr/bin/env bash
# The Apache Beam data_prep tests (pytest marker `beam`), in their own venv ./.venv-beam: the `beam`
# extra pins protobuf < 7, which the main venv does not need. .ci/run calls this after the main suite.
REALM_VENV="${REALM_BEAM_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv-beam}"
REALM_EXTRAS="test,beam"
export REALM_VENV REALM_EXTRAS
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$REPO"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m beam tests/data_prep/test_beam_runner.py "$@"
