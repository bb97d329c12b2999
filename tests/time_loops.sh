#!/usr/bin/env bash
# The edit loop's two tiers, timed as issue 33 asks: `make check` and `make test` in a fresh clone of
# this checkout whose venv is already built (this checkout's, linked in), on an otherwise idle machine.
# Not a test: it prints and records wall times. Usage: bash tests/time_loops.sh [STACK] [figures/test_times.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${1:-pinned}
out_csv=${2:-figures/test_times.csv}
[[ $out_csv = /* ]] || out_csv=$PWD/$out_csv
venv=$([ "$stack" = current ] && echo .venv-current || echo .venv)
test -f "$venv/.installed" || { echo "build $venv first: make install STACK=$stack"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q . "$work/clone"
ln -s "$PWD/$venv" "$work/clone/$venv"
ln -s "$PWD/../shared" "$work/shared" 2>/dev/null || true  # the out-of-domain sets, where the tests use them
touch "$venv/.installed"  # newer than the clone's lock file: make does not reinstall
cd "$work/clone"
test -f "$out_csv" || echo "stack,target,seconds,tests,commit" > "$out_csv"
for target in check test; do
    start=$(date +%s.%N)
    make "$target" STACK="$stack" > "$work/$target.log" 2>&1 || true
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    summary=$(grep -E "^(=+ )?[0-9]+ (passed|failed).* in [0-9.]+s" "$work/$target.log" | sed 's/=//g; s/^ *//; s/ *$//' \
        | paste -sd ';' - || true)
    echo "$stack,$target,$seconds,\"$summary\",$(git rev-parse --short HEAD)" | tee -a "$out_csv"
    grep -E "^FAILED|^Error|error:" "$work/$target.log" | head -20 || true
    cp "$work/$target.log" "${LOOP_LOGS:-/tmp}/time_loops_${stack}_${target}.log"
done
