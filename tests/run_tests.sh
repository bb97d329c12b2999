#!/usr/bin/env bash
# The whole test suite, as `make test` runs it: lint, unit tests, papermill runs and nbval.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

echo "== ruff"
$bin/ruff check helpers.py tests notebooks sweeps

echo "== a tiny copy of the notebook for nbval"
# papermill only injects the tiny settings here; nbval executes the copy and compares the
# cells marked NBVAL_CHECK_OUTPUT with the outputs the committed notebook holds.
rm -rf build/nbval && mkdir -p build/nbval
$bin/papermill --prepare-only notebooks/sentiment_lstm.ipynb build/nbval/sentiment_lstm_tiny.ipynb \
    -k sentiment-lstm -p use_sample True -p n_epochs 1 -p embedding_dim 8 -p hidden_dim 8 \
    -p max_vocab_size 2000 -p run_dir "$PWD/build/nbval/run"

echo "== pytest (unit tests, papermill runs, nbval)"
$bin/python -m pytest tests build/nbval/sentiment_lstm_tiny.ipynb \
    --nbval-lax --nbval-kernel-name sentiment-lstm
