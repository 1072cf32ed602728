#!/usr/bin/env bash
# Install everything (CPU build of torch) and run the test suite. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[test]'
bash slurm/start-test-slurm.sh  # a real one-node Slurm for tests/test_slurm.py
python3 -m pytest -q -p no:cacheprovider -m "not gpu" "$@"
