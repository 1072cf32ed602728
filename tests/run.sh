#!/usr/bin/env bash
# Install everything (CPU build of torch) and run the test suite. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
# the versions constraints.txt pins: what the README's install uses too
python3 -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0 -e '.[test]'
bash slurm/start-test-slurm.sh  # a real one-node Slurm for tests/test_slurm.py
command -v chromium >/dev/null || {  # a real browser for tests/test_report.py (Debian's package)
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; }
python3 -m pytest -q -p no:cacheprovider --durations=15 -m "not gpu" "$@"
bash tests/wheel_smoke.sh  # the package as a wheel, in a fresh venv, run outside the source tree
