#!/usr/bin/env bash
# Runs that share the cores (issue 33): the lesson at the exercises' size alone and two at once, under
# the default thread settings (a passive OpenMP wait) and with one thread per run, on an idle machine.
# Not a test: it prints and records wall times. Usage, from the repository root with .venv built and the
# full data at hand:
#   IMDB_ARCHIVE=path/to/aclImdb_v1.tar.gz OOD_DATA=folder bash tests/shared_cores.sh [figures/shared_cores.csv]
# Two warm-up runs (seeds 42 and 43) fill the cache first; the timed runs then find it filled.
set -uo pipefail
cd "$(dirname "$0")/.."
out_csv=${1:-figures/shared_cores.csv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export JUPYTER_PREFER_ENV_PATH=1
echo "run,seconds,outcome,setting" > "$work/times.csv"
one() {  # name seed, then environment assignments (OMP_WAIT_POLICY unset unless one of them sets it)
    local name=$1 seed=$2; shift 2
    local start status=finished; start=$(date +%s.%N)
    env -u OMP_WAIT_POLICY "$@" timeout 600 .venv/bin/papermill notebooks/sentiment_lstm.ipynb "$work/$name.ipynb" -k sentiment-lstm \
        -p run_dir "$work/$name" -p imdb_archive "${IMDB_ARCHIVE:-}" -p ood_data "${OOD_DATA:-}" \
        -p train_size 1500 -p valid_size 1000 -p test_size 2000 -p n_epochs 3 -p seed "$seed" > "$work/$name.log" 2>&1 \
        || { status="failed or stopped at 600 s"; tail -5 "$work/$name.log"; }
    echo "$name,$(echo "$(date +%s.%N) - $start" | bc),$status,\"$*\"" >> "$work/times.csv"
}
pair() {  # name, then environment assignments: seeds 42 and 43 at once
    local name=$1; shift
    local start; start=$(date +%s.%N)
    one "$name-a" 42 "$@" & one "$name-b" 43 "$@"; wait
    echo "$name-both,$(echo "$(date +%s.%N) - $start" | bc),finished,\"$*\"" >> "$work/times.csv"
}
one warmup-42 42 OMP_WAIT_POLICY=PASSIVE
one warmup-43 43 OMP_WAIT_POLICY=PASSIVE
one alone-active 42 OMP_WAIT_POLICY=ACTIVE
one alone-passive 42 OMP_WAIT_POLICY=PASSIVE
pair two-passive OMP_WAIT_POLICY=PASSIVE
one alone-1thread 42 OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
pair two-1thread OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
one alone-spin20k 42 GOMP_SPINCOUNT=20000
pair two-spin20k GOMP_SPINCOUNT=20000  # figures/shared_cores.csv: this pair was stopped after 254 s, unfinished
cp "$work/times.csv" "$out_csv"
cat "$out_csv"
