#!/usr/bin/env bash
# The whole test suite, as `make test` runs it: lint, unit tests, papermill runs and nbval.
# --check: the fast tier, as `make check` runs it: lint and the tests marked neither `notebook` (no kernel)
# nor `slow` (a subprocess or a large file).
# VENV=.venv-current runs it on the current stack (`make test STACK=current` sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
# the kernel sentiment-lstm registered inside that venv, not one of the same name elsewhere
export JUPYTER_PREFER_ENV_PATH=1
# torch's threads sleep while they wait: the runs below share the cores (see the README's "Tests")
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

echo "== ruff"
$bin/ruff check helpers.py tests notebooks sweeps

cores=$($bin/python -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")

if [ "${1:-}" = "--check" ]; then
    echo "== pytest: the tests that need no notebook run, and take under a second or two each"
    fast=(-m "not notebook and not slow" -q -p no:cacheprovider)
    if [ "$cores" -lt 2 ]; then
        exec $bin/python -m pytest tests "${fast[@]}"
    fi
    # Two processes where there are two cores: one pytest took 66 s here, about a minute of it the tests
    # themselves, single-threaded. The split is by file, about half of the tests' time each (--durations=0).
    check_first=(tests/test_sweep.py tests/test_control.py tests/test_out_of_domain.py tests/test_word_vectors.py
                 tests/test_training.py tests/test_reliability.py tests/test_analysis.py tests/test_text.py)
    check_log=$(mktemp)
    OMP_NUM_THREADS=1 $bin/python -m pytest "${check_first[@]}" "${fast[@]}" >"$check_log" 2>&1 &
    check_pid=$!
    check_status=0
    OMP_NUM_THREADS=1 $bin/python -m pytest tests "${check_first[@]/#/--ignore=}" "${fast[@]}" || check_status=$?
    first_status=0
    wait "$check_pid" || first_status=$?
    echo "== pytest ${check_first[*]}"
    cat "$check_log" && rm -f "$check_log"
    if [ "$check_status" -ne 0 ] || [ "$first_status" -ne 0 ]; then
        echo "FAILED: the rest exited with $check_status, ${check_first[*]} with $first_status"
        exit 1
    fi
    exit 0
fi

echo "== a tiny copy of the notebook for nbval"
# papermill only injects the tiny settings here; nbval executes the copy and compares the
# cells marked NBVAL_CHECK_OUTPUT with the outputs the committed notebook holds.
# One folder for each stack's venv (build/nbval, build/nbval-current), so that both can run at once.
nbval=build/nbval$(basename "${VENV:-.venv}" | sed 's/^\.venv//')
rm -rf "$nbval" && mkdir -p "$nbval"
$bin/papermill --prepare-only notebooks/sentiment_lstm.ipynb "$nbval/sentiment_lstm_tiny.ipynb" \
    -k sentiment-lstm -p use_sample True -p n_epochs 1 -p embedding_dim 8 -p hidden_dim 8 \
    -p max_vocab_size 2000 -p run_dir "$PWD/$nbval/run"

# Two pytest processes at once where there are two cores or more, each with half of them: the lesson's
# notebook tests (tests/test_notebook.py, about half of the suite's time), and everything else with nbval.
# They share no files: each test has its own folders, and the cache under data/cache is written atomically.
if [ "$cores" -lt 2 ]; then
    echo "== pytest (unit tests, papermill runs, nbval)"
    exec $bin/python -m pytest tests "$nbval/sentiment_lstm_tiny.ipynb" \
        --nbval-lax --nbval-kernel-name sentiment-lstm
fi
threads=$(( cores / 2 ))
log="$nbval/test_notebook.log"
echo "== pytest, two at once with $threads torch thread(s) each: tests/test_notebook.py, test_lab.py, test_sweep_dask.py and test_sweep.py (output: $log, shown"
echo "   when it ends) and the rest (unit tests, papermill runs, nbval)"
# The first process also takes the lab and the Dask sweeps: with test_notebook.py alone beside the rest, the
# rest took 400 s and it 195 s (figures/test_times.csv, 9ac898d); at ec86a11 this split gave 349 s and 309 s.
# Issue 33 then took work out of both, about as much from each: from the first, two of the three whole default
# runs of the committed notebook, and four Dask scheduler and three worker starts (one scheduler for the module's
# tcp tests, whose workers they share); from the rest, five of the eleven sample runs of the exercises' sweep.
# Then tests/test_sweep.py moved to the first (issue 33, again): the rest held the exercise-size run of the lesson
# on the real archive (about 180 s alone), and took 404 s beside the first's 283 s.
# Each prints its ten slowest tests (--durations), to rebalance by.
first=(tests/test_notebook.py tests/test_lab.py tests/test_sweep_dask.py tests/test_sweep.py)
OMP_NUM_THREADS=$threads $bin/python -m pytest "${first[@]}" --durations=10 >"$log" 2>&1 &
notebook_pid=$!
status=0
OMP_NUM_THREADS=$threads $bin/python -m pytest tests "${first[@]/#/--ignore=}" --durations=10 \
    "$nbval/sentiment_lstm_tiny.ipynb" --nbval-lax --nbval-kernel-name sentiment-lstm || status=$?
notebook_status=0
wait "$notebook_pid" || notebook_status=$?
echo "== pytest ${first[*]}"
cat "$log"
if [ "$status" -ne 0 ] || [ "$notebook_status" -ne 0 ]; then
    echo "FAILED: the rest exited with $status, ${first[*]} with $notebook_status"
    exit 1
fi
