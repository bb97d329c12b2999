#!/usr/bin/env bash
# The lesson's 50-minute route has two live runs: "Run all" on class_live.ipynb (the exercises' size), then on
# class_trained.ipynb (the teacher's checkpoint, n_epochs 0), the two notebooks `make class` prepares. This times
# both, as a student's kernel runs them (from notebooks/, the cache filled by an earlier run, nothing else
# running), and appends the wall times to figures/route_times.csv.
# Not a test: it measures. Usage: bash sweeps/time_route.sh [TEACHER_CHECKPOINT] [STACK]
# KEEP=folder keeps the two executed notebooks there (for a reading of the route), else they are deleted.
set -euo pipefail
export JUPYTER_PREFER_ENV_PATH=1  # the kernel sentiment-lstm of that venv
cd "$(dirname "$0")/.."
checkpoint=${1:-runs/teacher/checkpoint}
stack=${2:-pinned}
venv=$([ "$stack" = current ] && echo .venv-current || echo .venv)
test -f "$checkpoint/config.json" || { echo "no checkpoint at $checkpoint: make run, then copy its checkpoint/ there"; exit 1; }
out=figures/route_times.csv
test -f "$out" || echo "run,seconds,cpu,cores,stack,commit" > "$out"
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//; s/,//g')
make --no-print-directory class NO_LAB=1 STACK="$stack" TEACHER_CHECKPOINT="$checkpoint" >/dev/null
make --no-print-directory exercise STACK="$stack" >/dev/null 2>&1  # fills the cache, as "make exercise once" does
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for run in class_live class_trained; do
    start=$(date +%s.%N)
    (cd notebooks && "../$venv/bin/papermill" "$run.ipynb" "$scratch/$run.ipynb" -k sentiment-lstm --cwd . \
        > "$scratch/$run.log" 2>&1) || { tail -20 "$scratch/$run.log"; exit 1; }
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    echo "$run,$(printf '%.0f' "$seconds"),$cpu,$(nproc),$stack,$(git rev-parse --short HEAD)" | tee -a "$out"
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$scratch/$run.ipynb" "$KEEP/"; fi
done
