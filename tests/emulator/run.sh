#!/usr/bin/env bash
# Sets up the venv and runs the end-to-end tests (from the repository root); extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash tests/emulator/setup.sh
exec tests/emulator/.venv/bin/python -m pytest -q tests/emulator "$@"
