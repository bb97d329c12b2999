#!/usr/bin/env bash
# The whole test suite, as `make test` runs it: lint, unit tests, papermill runs and nbval.
# VENV=.venv-current runs it on the current stack (`make test STACK=current` sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
# the kernel sentiment-lstm registered inside that venv, not one of the same name elsewhere
export JUPYTER_PREFER_ENV_PATH=1

echo "== ruff"
$bin/ruff check helpers.py tests notebooks sweeps

echo "== a tiny copy of the notebook for nbval"
# papermill only injects the tiny settings here; nbval executes the copy and compares the
# cells marked NBVAL_CHECK_OUTPUT with the outputs the committed notebook holds.
# One folder for each stack's venv (build/nbval, build/nbval-current), so that both can run at once.
nbval=build/nbval$(basename "${VENV:-.venv}" | sed 's/^\.venv//')
rm -rf "$nbval" && mkdir -p "$nbval"
$bin/papermill --prepare-only notebooks/sentiment_lstm.ipynb "$nbval/sentiment_lstm_tiny.ipynb" \
    -k sentiment-lstm -p use_sample True -p n_epochs 1 -p embedding_dim 8 -p hidden_dim 8 \
    -p max_vocab_size 2000 -p run_dir "$PWD/$nbval/run"

echo "== pytest (unit tests, papermill runs, nbval)"
$bin/python -m pytest tests "$nbval/sentiment_lstm_tiny.ipynb" \
    --nbval-lax --nbval-kernel-name sentiment-lstm
