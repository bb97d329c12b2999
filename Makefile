# sentiment-lstm: `make run` trains and evaluates on the full IMDB data, `make test` checks everything.
# Both create .venv with the pinned stack on first use; they need only Python 3.11 and pip.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KERNEL := sentiment-lstm
NOTEBOOK := notebooks/sentiment_lstm.ipynb
# Extra papermill arguments for `make run`, e.g. PARAMS="-p n_epochs 3 -p hidden_dim 64".
PARAMS ?=
IMDB_ARCHIVE ?=

# Jupyter looks in the user's folders before the environment's; a kernel named sentiment-lstm
# registered elsewhere must not shadow the one in .venv.
export JUPYTER_PREFER_ENV_PATH := 1

.PHONY: help install run test bench lint lab sweep sweep-summary publish clean

help:
	@echo "make run      train and evaluate with the default parameters; results in a new runs/<time>/"
	@echo "make test     lint, unit tests and notebook tests on the bundled sample"
	@echo "make bench    speed and memory: training throughput, predict_review latency; writes figures/benchmark.json"
	@echo "make lab      open JupyterLab with the project's kernel"
	@echo "make sweep SWEEP=sweeps/<name>.yaml [JOBS=N]   run a hyperparameter sweep into runs/<name>/"
	@echo "make sweep-summary SWEEP=sweeps/<name>.yaml    rewrite the summary table and plots of a sweep"
	@echo "make publish RUN=runs/<time>   copy a run's executed notebook and figures into the repository"
	@echo "variables: IMDB_ARCHIVE=path/to/aclImdb_v1.tar.gz  PARAMS='-p name value ...'"

install: $(VENV)/.installed

# Rebuilt whenever requirements.txt changes. The kernel is registered inside .venv, and every
# papermill and nbval call below names it, so the notebook's own kernel name does not matter.
$(VENV)/.installed: requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "error: needs $(PYTHON) with venv (set PYTHON=...)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 ($(KERNEL))" >/dev/null
	@touch $@

run: install
	@set -e; run_dir=runs/$$(date +%Y-%m-%d_%H%M%S); mkdir -p runs; mkdir $$run_dir; \
	echo "run folder: $$run_dir"; \
	$(BIN)/papermill $(NOTEBOOK) $$run_dir/sentiment_lstm.ipynb -k $(KERNEL) --log-output --progress-bar \
		-p run_dir $$run_dir -p imdb_archive "$(IMDB_ARCHIVE)" $(PARAMS); \
	echo "done: $$run_dir/metrics.json"

test: install
	bash tests/run_tests.sh

# Not part of `make test`: it prints measured figures, it does not pass or fail on them.
bench: install
	$(BIN)/python tests/benchmark.py

lint: install
	$(BIN)/ruff check helpers.py tests notebooks sweeps

lab: install
	$(BIN)/jupyter lab notebooks/

SWEEP ?=
JOBS ?= 1

sweep: install
	@test -n "$(SWEEP)" || { echo "usage: make sweep SWEEP=sweeps/<name>.yaml [JOBS=N]"; exit 2; }
	$(BIN)/python sweeps/sweep.py $(SWEEP) --jobs $(JOBS)

sweep-summary: install
	@test -n "$(SWEEP)" || { echo "usage: make sweep-summary SWEEP=sweeps/<name>.yaml"; exit 2; }
	$(BIN)/python sweeps/sweep.py $(SWEEP) --summary-only

publish:
	@test -n "$(RUN)" && test -f "$(RUN)/metrics.json" || { echo "usage: make publish RUN=runs/<time> (a finished run)"; exit 1; }
	cp $(RUN)/sentiment_lstm.ipynb $(NOTEBOOK)
	cp $(RUN)/figures/*.png figures/
	cp $(RUN)/metrics.json figures/metrics.json

clean:
	rm -rf build .pytest_cache .ruff_cache
