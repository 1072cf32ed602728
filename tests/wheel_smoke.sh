#!/usr/bin/env bash
# Installs that work anywhere: build the wheel, install it into a fresh virtual environment and run
# the demo from a directory outside the source tree (where no configs/ lies beside the package).
# The venv sees the system site packages, so the dependencies tests/run.sh installed are reused and
# nothing is downloaded; the package itself comes from the wheel only (--force-reinstall --no-deps).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# built with the interpreter tests/run.sh set up (its setuptools; a new venv may bundle an older one)
# from a copy of the source files (tracked or not ignored): a build/ left in the tree by an earlier
# build could otherwise put modules that no longer exist into the wheel
mkdir "$WORK/src"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) \
    | tar -xf - -C "$WORK/src"
python3 -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$WORK/wheel" "$WORK/src"
python3 -m venv --system-site-packages "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
    "$WORK"/wheel/virnuc_hpc-*.whl
mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
# the installed package, not the source tree, must be what runs
installed="$("$WORK/venv/bin/python" -c 'import virnuc_hpc, pathlib; print(pathlib.Path(virnuc_hpc.__file__).parent)')"
case "$installed" in
    "$ROOT"/*) echo "wheel_smoke: imported the source tree ($installed), not the wheel" >&2; exit 1 ;;
esac
"$WORK/venv/bin/virnuc-hpc" predict "$ROOT/examples/demo.fasta" --preset demo --no-progress -o out
test -s out/prediction_results.txt || { echo "wheel_smoke: no prediction_results.txt" >&2; exit 1; }
echo "wheel_smoke: ok (installed at $installed)"
