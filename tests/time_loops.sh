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
test -f "$out_csv" || echo "stack,target,seconds,tests,commit,probe_seconds" > "$out_csv"
# The machine's own speed, since machines of one name differ from session to session (an AMD EPYC ran the same
# suite 1.5 times slower than another): one thread, a fixed LSTM forward and backward, alone. Compare suite
# times only beside it.
probe=$("$venv/bin/python" - <<'PROBE'
import time
import torch
torch.set_num_threads(1)
torch.manual_seed(0)
lstm, x = torch.nn.LSTM(64, 64, batch_first=True), torch.randn(32, 200, 64)
lstm(x)[0].sum().backward()  # warm-up
start = time.perf_counter()
for _ in range(10):
    lstm(x)[0].sum().backward()
print(f"{time.perf_counter() - start:.2f}")
PROBE
)
echo "probe: $probe s (one thread, ten LSTM forward and backward passes)"
for target in check test; do
    start=$(date +%s.%N)
    make "$target" STACK="$stack" > "$work/$target.log" 2>&1 || true
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    summary=$(grep -E "^(=+ )?[0-9]+ (passed|failed).* in [0-9.]+s" "$work/$target.log" | sed 's/=//g; s/^ *//; s/ *$//' \
        | paste -sd ';' - || true)
    echo "$stack,$target,$seconds,\"$summary\",$(git rev-parse --short HEAD),$probe" | tee -a "$out_csv"
    grep -E "^FAILED|^Error|error:" "$work/$target.log" | head -20 || true
    cp "$work/$target.log" "${LOOP_LOGS:-/tmp}/time_loops_${stack}_${target}.log"
done
